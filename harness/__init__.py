"""The BlindSight harness core: config, plugin manager, runners, result store, report rendering."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bsight")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
