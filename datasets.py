"""Text-image data sets: not implemented yet."""
