"""l0-nn (shell; filled by its own issue)."""

from l0_core import __version__ as _core_version

__version__ = "0.1.0"

__all__ = ["__version__"]
