"""fastcnn's version: pyproject.toml reads it from here, and the kernels' cache is keyed by it."""

__version__ = "0.3.0"
