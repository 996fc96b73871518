"""An MoE recipe to a plan: the output format, the output config and every output tensor's pieces.

Only config.json files and tensor headers are read. The output format is a plugin
(``mergehub_register_moe_formats``): the recipe's ``architecture`` narrows the candidates by name,
and the first that accepts the sources wins; when none does, the error lists each candidate with
its reason. Every piece is resolved to a source tensor here, so a missing expert tensor or a shape
that does not line up is reported before any weight is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mergehub.common import dtypes
from mergehub.common.errors import MergehubError, Problem, RecipeError
from mergehub.models.loader import ModelInfo, load_model
from mergehub.plan.planner import Output
from mergehub.plugin import catalog
from mergehub.plugin.registry import Registry
from mergehub.plugin.specs import MoEFormatSpec, MoEPiece, MoETensor
from mergehub.recipe.chattemplate import builtin_template
from mergehub.recipe.config import ModelRef, normalize_dtype
from mergehub.recipe.moe import PROMPTED, MoERecipe
from mergehub.recipe.yamlsource import PathKey, format_path


@dataclass(frozen=True)
class SourceRows:
    """A resolved piece: rows from model ``model`` (index into the plan's models) or from a router."""

    piece: MoEPiece
    model: int | None  # None: a router, computed by the core
    shape: tuple[int, ...]
    dtype: str
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass
class MoEOutputTensor:
    name: str
    pieces: list[SourceRows]
    shape: tuple[int, ...]
    out_dtype: str

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.out_dtype, self.shape)


@dataclass
class MoEPlan(Output):
    recipe: MoERecipe
    models: list[ModelInfo]  # base first, then every other distinct expert model
    format: MoEFormatSpec
    config: dict[str, Any]
    tensors: list[MoEOutputTensor]
    hidden_size: int
    num_layers: int
    chat_template: str | None = None  # the template text to write, resolved from the recipe
    warnings: list[str] = field(default_factory=list)
    vocab: None = None  # the output tokenizer is the base's (what copy_tokenizer needs to know)
    trust_remote_code: bool = False


def make_moe_plan(recipe: MoERecipe, registry: Registry) -> MoEPlan:
    """Load the models (headers only), choose the format and resolve every output tensor."""
    models, index = _load_models(recipe, registry)
    try:
        base = models[0].config
        experts = [models[index[e.model]].config for e in recipe.experts]
        shared = [models[index[e.model]].config for e in recipe.shared]
        spec, fmt = choose_format(recipe, registry, base, experts, shared)
        config = fmt.config(base, len(recipe.experts), recipe.experts_per_token, len(recipe.shared))
        out_dtype = recipe.dtype or _config_dtype(base)
        hidden, layers = int(base["hidden_size"]), int(base["num_hidden_layers"])
        names = models[0].reader.tensor_names()
        layout = fmt.tensors(base, names, len(recipe.experts), len(recipe.shared))
        tensors = [_resolve(t, recipe, models, index, out_dtype, hidden) for t in layout]
        _check_shared_gates(recipe, tensors)
        if out_dtype:
            config["torch_dtype"] = out_dtype
        template = builtin_template(recipe.chat_template) or recipe.chat_template if recipe.chat_template else None
        return MoEPlan(recipe, models, spec, config, tensors, hidden, layers, template)
    except BaseException:
        for model in models:
            model.close()
        raise


def choose_format(recipe: MoERecipe, registry: Registry, base: dict, experts: list[dict],
                  shared: list[dict]) -> tuple[MoEFormatSpec, Any]:
    """The first installed format that accepts the sources (among those ``architecture`` names)."""
    available = [r.spec for r in registry.moe_formats.values()]
    wanted = recipe.architecture
    candidates = [s for s in available if not wanted or _key(s.name).startswith(_key(wanted))]
    standard = " ".join(sorted(set(catalog.MOE_FORMATS.values())))
    names = ", ".join(sorted(s.name for s in available)) or f"none (pip install {standard})"
    if not candidates:
        raise MergehubError(f"no MoE output format matches architecture '{wanted}'",
                            hint=f"installed formats: {names}; leave architecture out to pick the first that fits")
    reasons = []
    for spec in candidates:
        fmt = spec.load()
        reason = fmt.rejects(base, experts, shared)
        if reason is None:
            return spec, fmt
        reasons.append(f"{spec.name}: {reason}")
    types = sorted({c.get("model_type", "?") for c in [base, *experts, *shared]})
    raise MergehubError(f"no MoE output format accepts these sources (model types: {', '.join(types)}"
                        + (f"; {len(shared)} shared experts" if shared else "") + "); " + "; ".join(reasons),
                        hint=f"installed formats: {names}; a format plugin adds support for another family")


def _check_shared_gates(recipe: MoERecipe, tensors: list[MoEOutputTensor]) -> None:
    """A format that gates its shared experts needs their prompts when the gates come from prompts."""
    gated = any(p.piece.source == "shared_router" for t in tensors for p in t.pieces)
    if gated and recipe.gate_mode in PROMPTED and not all(e.positive for e in recipe.shared):
        document = recipe.document
        raise RecipeError([Problem("this format gates the shared expert per token, and gate_mode "
                                   f"'{recipe.gate_mode}' makes that gate from its positive_prompts, which it has not",
                                   "shared_experts", document.line_of(("shared_experts",)),
                                   "give the shared expert positive_prompts, or use gate_mode: random")], document.file)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _config_dtype(config: dict) -> str | None:
    value = config.get("torch_dtype") or config.get("dtype")
    try:
        return normalize_dtype(value) if isinstance(value, str) else None
    except ValueError:  # a dtype mergehub does not write: keep each source tensor's
        return None


def _load_models(recipe: MoERecipe, registry: Registry) -> tuple[list[ModelInfo], dict[ModelRef, int]]:
    """Every distinct model, base first; every one that cannot be opened is reported at its recipe line."""
    document = recipe.document
    places: list[tuple[PathKey, ModelRef]] = [(("base_model",), recipe.base)]
    places += [(("experts", i, "source_model"), e.model) for i, e in enumerate(recipe.experts)]
    places += [(("shared_experts", i, "source_model"), e.model) for i, e in enumerate(recipe.shared)]
    models: list[ModelInfo] = []
    index: dict[ModelRef, int] = {}
    problems: list[Problem] = []
    for path, ref in places:
        if ref in index:
            continue
        try:
            models.append(load_model(ref, registry))
            index[ref] = len(models) - 1
        except MergehubError as exc:
            problems.append(Problem(exc.message, format_path(path), document.line_of(path), exc.hint))
    if problems:
        for model in models:
            model.close()
        raise RecipeError(problems, document.file)
    return models, index


def _resolve(tensor: MoETensor, recipe: MoERecipe, models: list[ModelInfo], index: dict[ModelRef, int],
             out_dtype: str | None, hidden: int) -> MoEOutputTensor:
    rows = [_piece(p, recipe, models, index, hidden) for p in tensor.pieces]
    tails = {r.shape[1:] for r in rows}
    if len(tails) != 1:
        shapes = ", ".join(str(r.shape) for r in rows)
        raise MergehubError(f"the pieces of MoE tensor {tensor.name} do not line up: {shapes}",
                            hint="the experts must be fine-tunes of one base (same sizes)")
    (tail,) = tails
    total = sum(r.shape[0] if r.shape else 1 for r in rows)
    shape: tuple[int, ...] = (total, *tail) if len(rows) > 1 else rows[0].shape
    if tensor.per_expert:
        if total % tensor.per_expert:
            raise MergehubError(f"MoE tensor {tensor.name}: {total} rows do not split into {tensor.per_expert} experts",
                                hint="this is a bug in the MoE format plugin")
        shape = (tensor.per_expert, total // tensor.per_expert, *tail)
    dtype = out_dtype or next((r.dtype for r in rows if r.model is not None), "float32")
    return MoEOutputTensor(tensor.name, rows, shape, dtype)


def _piece(piece: MoEPiece, recipe: MoERecipe, models: list[ModelInfo], index: dict[ModelRef, int],
           hidden: int) -> SourceRows:
    if piece.source in ("router", "shared_router"):
        count = len(recipe.experts) if piece.source == "router" else len(recipe.shared)
        return SourceRows(piece, None, (count, hidden), "float32")
    expert = None
    if piece.source == "base":
        model = 0
    else:
        group = recipe.experts if piece.source == "expert" else recipe.shared
        expert = group[piece.index]
        model = index[expert.model]
    assert piece.tensor is not None
    info = models[model]
    try:
        header = info.reader.header(piece.tensor)
    except KeyError:
        raise MergehubError(f"model {info.ref} has no tensor {piece.tensor}, which the MoE needs",
                            hint="every expert must be a fine-tune of the base with the same tensors") from None
    shape = tuple(header.shape)
    return SourceRows(piece, model, shape, header.dtype, expert.noise_scale if expert else None,
                      expert.residual_scale if expert else None)
