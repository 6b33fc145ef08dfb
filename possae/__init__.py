"""possae: positional features in sparse autoencoders, computed for a research report written as code."""

__version__ = "0.1.0"
