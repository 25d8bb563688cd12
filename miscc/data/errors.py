"""The error every data-set loader raises for bad input."""

__all__ = ['DataError']


class DataError(ValueError):
    """A data set is missing, incomplete or inconsistent; the message says what to do."""
