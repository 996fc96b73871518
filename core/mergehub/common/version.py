"""The installed distribution's version: the one written in the repository's VERSION file."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mergehub")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
