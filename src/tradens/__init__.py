"""tradens: tensor-reduced atomic density representations."""

from ._version import __version__

__all__ = ["__version__"]
