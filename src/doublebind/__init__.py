"""doublebind: measure what transfers when a misaligned model is distilled."""

__version__ = "0.1.0"
