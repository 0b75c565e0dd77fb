"""The installed bsight version, stamped into head maps, pattern configs and provenance."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bsight")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
