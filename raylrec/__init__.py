"""raylrec: Ray-distributed training and batch scoring for LLM recommenders."""

__version__ = "0.1.0"
