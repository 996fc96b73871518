"""The frozen objects plugins hand to the core through the registration hooks.

Specs reference their implementation by dotted path so that listing plugins or
validating a recipe never imports torch-heavy code; the implementation is imported
only when a merge actually uses it.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

BasePolicy = Literal["required", "optional", "ignored"]
Scope = Literal["shared", "input", "non_base"]


@dataclass(frozen=True)
class TensorHeader:
    """What an IO backend knows of one stored tensor without reading it."""


    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]


class TensorReader(Protocol):
    """What an IO backend's reader offers."""

    def tensor_names(self) -> list[str]: ...
    def header(self, name: str) -> TensorHeader: ...
    def read(self, name: str) -> Any: ...
    def read_rows(self, name: str, start: int, stop: int) -> Any: ...
    def close(self) -> None: ...


def import_object(path: str) -> Any:
    """Import ``package.module:attribute``."""
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its name, its parameter schema and where its maths lives.

    ``parameters`` is a JSON Schema (draft 2020-12) object schema. Each property carries
    ``x-scope``: ``shared`` (one value per output tensor), ``input`` (one per model,
    base included) or ``non_base`` (one per model except the base). The top-level
    ``x-mergehub`` block states the input contract: ``base`` policy and the allowed
    number of inputs.
    """

    name: str
    summary: str
    parameters: dict[str, Any]
    implementation: str  # "package.module:function", called with a MergeInputs
    base: BasePolicy = "ignored"
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int = 0
    max_non_base: int | None = None
    paper: str | None = None
    randomized: bool = False
    check: str | None = None  # "package.module:function": (params, shared) -> problem text or None
    #: How a tensor too large for --max-memory can be merged in row blocks: "elementwise" (the merge
    #: function works on any block of rows, or of elements for 1-D tensors), "rows" (on blocks of whole
    #: rows), "package.module:factory" (a multi-pass BlockMerge, see mergehub.maths.blocks), or "none".
    blocks: str = "none"

    @classmethod
    def from_schema_file(cls, path: str | Path, implementation: str) -> MethodSpec:
        """Build a spec from a plugin's ``parameters.schema.json``.

        The method's name is ``x-mergehub.name``, the one place it is declared (the core schema
        requires it). A JSON Schema ``title`` is not read: schemas that still carry one from before
        keep working, and one that disagrees with the name changes nothing.
        """
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
        contract = schema.get("x-mergehub", {})
        return cls(
            name=contract.get("name", ""),
            summary=schema.get("description", ""),
            parameters=schema,
            implementation=implementation,
            base=contract.get("base", "ignored"),
            min_inputs=contract.get("min_inputs", 1),
            max_inputs=contract.get("max_inputs"),
            min_non_base=contract.get("min_non_base", 0),
            max_non_base=contract.get("max_non_base"),
            paper=contract.get("paper"),
            randomized=contract.get("randomized", False),
            check=contract.get("check"),
            blocks=contract.get("blocks", "none"),
        )

    @classmethod
    def from_package(cls, package: str) -> MethodSpec:
        """The usual plugin shape: ``<package>/parameters.schema.json`` and ``<package>.method:merge``."""
        schema = importlib.resources.files(package).joinpath("parameters.schema.json")
        return cls.from_schema_file(str(schema), f"{package}.method:merge")

    def param_scope(self, name: str) -> Scope:
        return self.parameters.get("properties", {}).get(name, {}).get("x-scope", "shared")

    def param_names(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    def required_params(self) -> list[str]:
        return list(self.parameters.get("required", []))

    def defaults(self) -> dict[str, Any]:
        props = self.parameters.get("properties", {})
        return {name: prop["default"] for name, prop in props.items() if "default" in prop}

    def ignored_params(self) -> dict[str, str]:
        """Parameters accepted for compatibility but without effect, with the reason (``x-ignored``)."""
        props = self.parameters.get("properties", {})
        return {name: prop["x-ignored"] for name, prop in props.items() if "x-ignored" in prop}

    def load(self) -> Callable[[MergeInputs], torch.Tensor]:
        return import_object(self.implementation)

    def load_check(self) -> Callable[[list[dict[str, Any]], dict[str, Any]], str | None] | None:
        return import_object(self.check) if self.check else None


@dataclass(frozen=True)
class ArchitectureSpec:
    """An architecture definition (validated against ``architecture.schema.json``)."""

    name: str
    definition: dict[str, Any]

    @classmethod
    def from_json(cls, path: str | Path) -> ArchitectureSpec:
        definition = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(name=definition.get("name", ""), definition=definition)

    @classmethod
    def from_package(cls, package: str, file: str) -> ArchitectureSpec:
        """A definition shipped as a JSON file inside the plugin's package."""
        return cls.from_json(str(importlib.resources.files(package).joinpath(file)))

    @property
    def architectures(self) -> list[str]:
        return list(self.definition.get("architectures", []))


@dataclass(frozen=True)
class IOBackendSpec:
    """A reader/writer of weight files; ``implementation`` names a class to instantiate."""

    name: str
    summary: str
    implementation: str
    can_write: bool = False

    def load(self) -> Any:
        return import_object(self.implementation)()


@dataclass(frozen=True)
class ExecutorSpec:
    """A way to run a plan: computes its tensors and writes the shards of one stage.

    ``implementation`` names a class (``package.module:Class``) built with the run's
    :class:`~mergehub.run.options.RunOptions` and called with one
    :class:`~mergehub.run.job.ExecutorJob` per stage (see :func:`~mergehub.plugin.hookspecs.mergehub_register_executors`).
    ``options`` is the JSON Schema of the ``--executor-option KEY=VALUE`` settings it takes.
    """

    name: str
    summary: str
    implementation: str
    options: dict[str, Any] = field(default_factory=lambda: {"type": "object", "additionalProperties": False})

    def load(self) -> Any:
        return import_object(self.implementation)


@dataclass(frozen=True)
class MoEPiece:
    """Where a run of rows of a mixture-of-experts output tensor comes from.

    ``source``: ``base`` (the base model), ``expert`` / ``shared`` (the ``index``-th routed or shared
    expert's model), or ``router`` / ``shared_router`` (the gate vectors the core computes for layer
    ``index``: one row per routed expert, or one row per shared expert). ``tensor`` names the source
    tensor (None for routers). ``residual`` marks tensors that write into the residual stream (the
    down projection), which an expert's ``residual_scale`` multiplies.
    """

    source: Literal["base", "expert", "shared", "router", "shared_router"]
    index: int = 0
    tensor: str | None = None
    residual: bool = False


@dataclass(frozen=True)
class MoETensor:
    """One output tensor of a mixture-of-experts model: its ``pieces`` concatenated along dim 0.

    With ``per_expert`` the concatenation is reshaped to (experts, rows per expert, …): the fused
    layout transformers uses for expert weights (``experts.gate_up_proj`` = each expert's gate
    rows then up rows, ``experts.down_proj``); every piece is copied byte for byte otherwise.
    """

    name: str
    pieces: tuple[MoEPiece, ...]
    per_expert: int | None = None  # the leading dim of the fused layout (the number of experts), if any


@dataclass(frozen=True)
class MoEFormatSpec:
    """An output format for ``mergehub moe``: which dense sources it accepts and how it lays them out.

    ``implementation`` names a class (``package.module:Class``) built without arguments; see
    :func:`~mergehub.plugin.hookspecs.mergehub_register_moe_formats` for what it offers.
    """

    name: str
    summary: str
    implementation: str

    def load(self) -> Any:
        return import_object(self.implementation)()


@dataclass
class MergeInputs:
    """Everything a method needs to compute one output tensor.

    ``tensors`` are in recipe order, already cast to the working dtype and on the
    compute device; ``base`` is the index of the base model's tensor (or None);
    ``params[i]`` holds the resolved per-model parameters of ``tensors[i]``;
    ``shared`` holds the resolved shared parameters; ``generator`` is seeded from
    (``--seed``, output name) so random methods give the same bytes in any order.
    """

    name: str
    tensors: list[torch.Tensor]
    base: int | None
    params: list[dict[str, Any]]
    shared: dict[str, Any]
    models: list[str] = field(default_factory=list)
    generator: torch.Generator | None = None
    #: For a block of a larger tensor: the index (along dim 0) of its first row, and the whole shape.
    offset: int = 0
    full_shape: tuple[int, ...] | None = None
