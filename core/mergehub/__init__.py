"""mergehub: merge the weights of large language models from YAML recipes.

The core knows no merge method, architecture or file format by itself; all of them
arrive through plugins (see :mod:`mergehub.hookspecs`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mergehub.errors import MergehubError, Problem, RecipeError
from mergehub.hookspecs import hookimpl
from mergehub.specs import ArchitectureSpec, IOBackendSpec, MergeInputs, MethodSpec

try:  # the one version, written in the repository's VERSION file, as the installed distribution states it
    __version__ = version("mergehub")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ArchitectureSpec",
    "IOBackendSpec",
    "MergeInputs",
    "MergehubError",
    "MethodSpec",
    "Problem",
    "RecipeError",
    "hookimpl",
    "__version__",
]
