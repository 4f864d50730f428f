"""tte2tee-fast: synthetic transesophageal echo from label masks, fast."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tte2tee-fast")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
