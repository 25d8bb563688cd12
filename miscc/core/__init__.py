"""Config, files, checkpoints and run-time set-up: the layer everything else builds on."""
