"""mergehub: merge the weights of large language models from YAML recipes.

The core knows no merge method, architecture or file format by itself; all of them
arrive through plugins (see :mod:`mergehub.hookspecs`).
"""

from __future__ import annotations

from mergehub.errors import MergehubError, Problem, RecipeError
from mergehub.hookspecs import hookimpl
from mergehub.specs import ArchitectureSpec, IOBackendSpec, MergeInputs, MethodSpec

__version__ = "0.1.0"

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
