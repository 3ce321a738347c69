"""hwnas: hardware-aware NAS for binary neural networks."""

__version__ = "0.1.0"
