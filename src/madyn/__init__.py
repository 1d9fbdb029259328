"""madyn: massive-activation dynamics of transformers over training."""

__version__ = "0.1.0"
