"""Data-set helpers below the loaders of ``datasets.py``: restricted unpickling, synthetic birds."""
