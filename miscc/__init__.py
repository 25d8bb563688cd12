"""The project's library, in layers that import only downwards: ``core`` (config, files,
checkpoints, run-time), ``data`` (safe pickles, synthetic birds; ``datasets.py`` beside the
package), ``families`` (generator families and their updates), ``evaluation`` (generation,
metrics, scores), ``training`` (the epoch driver and the trainers), ``demo``, ``cli``."""
