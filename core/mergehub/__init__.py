"""mergehub: merge the weights of large language models from YAML recipes.

This module is the public API for plugin authors. A method, architecture, IO or executor plugin
imports what it needs from here, block kernels from :mod:`mergehub.maths`, and test helpers from
:mod:`mergehub.testing`; every other module is internal and may change between releases.

The core knows no merge method, architecture or file format by itself; all of them arrive
through plugins (see :mod:`mergehub.plugin.hookspecs` for the hooks). The packages read as the
pipeline: :mod:`~mergehub.recipe` (text to a validated recipe), :mod:`~mergehub.models` (finding
and reading inputs), :mod:`~mergehub.plan` (recipe to plan), :mod:`~mergehub.run` (plan to files),
with :mod:`~mergehub.plugin`, :mod:`~mergehub.maths` and :mod:`~mergehub.common` beneath them.
"""

from __future__ import annotations

from mergehub.common import dtypes
from mergehub.common.errors import MergehubError, Problem, RecipeError
from mergehub.common.version import __version__
from mergehub.plugin.hookspecs import hookimpl
from mergehub.plugin.moelayout import expert_layout
from mergehub.plugin.specs import (
    ArchitectureSpec,
    ExecutorSpec,
    IOBackendSpec,
    MergeInputs,
    MethodSpec,
    MoEFormatSpec,
    MoEPiece,
    MoETensor,
    TensorHeader,
    TensorReader,
)

__all__ = [
    "ArchitectureSpec",
    "ExecutorSpec",
    "IOBackendSpec",
    "MergeInputs",
    "MergehubError",
    "MethodSpec",
    "MoEFormatSpec",
    "MoEPiece",
    "MoETensor",
    "Problem",
    "RecipeError",
    "TensorHeader",
    "TensorReader",
    "dtypes",
    "expert_layout",
    "hookimpl",
    "__version__",
]
