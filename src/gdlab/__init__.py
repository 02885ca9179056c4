"""gdlab: exact full-batch gradient descent and its variants, numerical stability, fair comparisons."""

__version__ = "0.1.0"
