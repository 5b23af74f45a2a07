"""The open reference lab for unlearnable audio datasets."""

__version__ = "0.1.0"
