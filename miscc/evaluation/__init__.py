"""Generation from a trained generator, its output folders, and the evaluation metrics."""
