"""Shared machinery: config, checkpoints, losses, training, sampling, metrics."""
