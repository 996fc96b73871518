"""Expand a recipe into the exact list of output tensors, before any tensor is read.

The planner reads only ``config.json`` files and tensor headers. Every recipe
mistake it can detect (missing models, unequal slice lengths, ranges past the end,
missing tensors, missing parameters, shape mismatches) is collected and reported in
one :class:`RecipeError`.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from mergehub.common import dtypes
from mergehub.common.errors import MergehubError, Problem, RecipeError
from mergehub.models.architecture import Layout, WeightDef, resolve_layout, set_key
from mergehub.models.loader import ModelInfo, load_model, local_model_problems
from mergehub.models.vocab import (
    OutputVocab,
    RowsPlan,
    TokenError,
    VocabRows,
    inferred_vocab_axis,
    plan_rows,
    set_vocab_size,
    unknown_tokens_warning,
)
from mergehub.plan.contract import check_contract
from mergehub.plan.layerconfig import check_output_config, rebuild_layer_keys
from mergehub.plugin.registry import Registry
from mergehub.recipe.config import ModelRef, Recipe, Slice, Source, load_recipe
from mergehub.recipe.paramcheck import ParamChecker
from mergehub.recipe.params import UNSET, layer_position, resolve
from mergehub.recipe.yamlsource import Document


@dataclass(frozen=True)
class InputTensor:
    model: int  # index into Plan.models
    name: str  # tensor name inside that model (a tied name when the model lacks its own)


@dataclass
class OutputTensor:
    """One tensor of the output, with everything needed to compute it."""

    name: str
    inputs: list[InputTensor]
    base: int | None  # index into inputs
    params: list[dict[str, Any]]
    shared: dict[str, Any]
    shape: tuple[int, ...]
    in_dtypes: list[str]
    work_dtype: str | None
    out_dtype: str
    vocab: VocabRows | None = None  # set when the rows are aligned to the output tokenizer

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.out_dtype, self.shape)

    @property
    def floating(self) -> bool:
        return all(d in dtypes.FLOATING for d in self.in_dtypes)


class Output:
    """What every plan of an output model has: its input ``models`` (the first one donates tokenizer and
    config defaults) and the ``tensors`` it writes. Subclasses are dataclasses declaring both."""

    models: list[ModelInfo]
    tensors: list[Any]

    @property
    def donor(self) -> ModelInfo:
        return self.models[0]

    def bytes_to_write(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def close(self) -> None:
        for model in self.models:
            model.close()


@dataclass
class Plan(Output):
    recipe: Recipe
    models: list[ModelInfo]
    layout: Layout
    tensors: list[OutputTensor]
    num_layers: int
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    #: for each output layer: (index into models, source layer) of its slice's first source
    layer_sources: list[tuple[int, int]] = field(default_factory=list)
    vocab: OutputVocab | None = None  # the output tokenizer, when the recipe asks for one
    chat_template: str | None = None  # the template text to write, resolved from the recipe
    trust_remote_code: bool = False  # --trust-remote-code: tokenizers may import the models' own classes


def checked_recipe(document: Document, registry: Registry, planned: Collection[str] = ()) -> Recipe:
    """The recipe in ``document``; when its text has problems, the problems of its local models join them.

    Every mistake is in one report: a typo in a key and a wrong model path are fixed in one round.
    """
    try:
        return load_recipe(document, registry)
    except RecipeError as exc:
        found = exc.problems + local_model_problems(document, registry, planned)
        raise RecipeError(sorted(found, key=lambda p: (p.line or 0, p.path)), exc.file) from None


def make_plan(recipe: Recipe, registry: Registry, allow_crimes: bool = False,
              planned: dict[str, ModelInfo] | None = None, trust_remote_code: bool = False) -> Plan:
    """Plan ``recipe``. ``planned`` maps model paths that do not exist yet (outputs of earlier
    stages) to models described by their own plans, so a whole multi-stage recipe is checked
    before anything runs."""
    return Planner(recipe, registry, allow_crimes, planned, trust_remote_code).plan()


class Planner:
    def __init__(self, recipe: Recipe, registry: Registry, allow_crimes: bool = False,
                 planned: dict[str, ModelInfo] | None = None, trust_remote_code: bool = False):
        self.recipe = recipe
        self.trust_remote_code = trust_remote_code
        self.planned = planned or {}
        self.registry = registry
        self.allow_crimes = allow_crimes
        self.problems: list[Problem] = []
        self.reported: set[tuple[str, str]] = set()
        self.checker = ParamChecker(recipe.method)
        self.method_check = recipe.method.load_check()
        self.broken: set[int] = set()  # slices whose ranges are wrong: their layers are not planned
        self.vocab: OutputVocab | None = None
        self.unknown_tokens: set[str] = set()  # tokens no model has: zero rows
        self.vocab_warnings: list[str] = []

    def fail_if_problems(self) -> None:
        if self.problems:
            ordered = sorted(self.problems, key=lambda p: (p.line or 0, p.path))
            raise RecipeError(ordered, self.recipe.document.file)

    def add(self, path: tuple, message: str, hint: str | None = None, key: tuple[str, str] | None = None) -> None:
        if key is not None:
            if key in self.reported:
                return
            self.reported.add(key)
        self.problems.append(self.recipe.problem(path, message, hint))

    # -- models and slices -------------------------------------------------------------
    def plan(self) -> Plan:
        models = self.load_models()
        self.fail_if_problems()
        self.index = {m.ref: i for i, m in enumerate(models)}
        self.models = models
        self.names = [set(m.reader.tensor_names()) for m in models]
        layout, warnings = resolve_layout(models, self.registry, self.allow_crimes, self.trust_remote_code)
        self.layout = layout
        self.vocab = self.build_vocab()
        self.fail_if_problems()
        slices = self.complete_slices()
        for i, slice_ in enumerate(slices):
            check_contract(self, slice_, self.slice_base(slice_), i)
        tensors = self.expand(slices)  # skips the layers of broken slices, so later problems still show
        self.fail_if_problems()
        num_layers = sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in slices)  # type: ignore[index]
        template = self.chat_template()
        plan = Plan(self.recipe, models, layout, tensors, num_layers, {}, warnings + self.vocab_warnings,
                    self.layer_sources, self.vocab, template, self.trust_remote_code)
        plan.config = output_config(plan)
        problem = check_output_config(plan)
        if problem:
            self.add(("slices",) if self.recipe.syntax == "slices" else ("models",), problem[0], problem[1])
            self.fail_if_problems()
        plan.warnings += self.unused_tensor_warnings(tensors) + unknown_tokens_warning(self.unknown_tokens)
        return plan

    # -- tokenizer and chat template ---------------------------------------------------
    def build_vocab(self) -> OutputVocab | None:
        """The output tokenizer and the models' permutations (tokenizer base: models[0], the donor)."""
        settings = self.recipe.tokenizer
        if settings is None:
            return None
        from mergehub.models.tokenizer import build_output_vocab

        try:
            return build_output_vocab(settings, self.models, self.vocab_warnings.append, self.trust_remote_code)
        except MergehubError as exc:
            self.add(settings.source_path, exc.message, exc.hint)
            return None

    def chat_template(self) -> str | None:
        from mergehub.models.tokenizer import plan_template

        template, warning = plan_template(self.recipe.chat_template, self.models, self.vocab is not None)
        self.vocab_warnings += [warning] if warning else []
        return template

    def vocab_axis(self, weight: WeightDef, headers: list[Any], inputs: list[InputTensor]) -> int | None:
        """The axis to align, when the recipe builds a tokenizer (for inferred layouts: guessed)."""
        if self.vocab is None:
            return None
        if weight.vocab_axis is not None or self.layout.inferred_layers is None or "{layer}" in weight.name:
            return weight.vocab_axis
        return inferred_vocab_axis([h.shape for h in headers], [self.models[i.model].config for i in inputs])

    def aligned_shape(self, out_name: str, axis: int, slice_: Slice, sources: list[Source], inputs: list[InputTensor],
                      headers: list[Any]) -> tuple[tuple[int, ...], VocabRows] | None:
        """The output shape of a vocabulary tensor and where its rows come from (None: a problem was added)."""
        assert self.vocab is not None
        if axis != 0:
            self.add(self.recipe.tokenizer.path, f"cannot align {out_name}: its vocabulary axis is {axis}, and only "  # type: ignore[union-attr]
                     "axis 0 (one row per token) can be aligned", "this architecture definition is not supported with "
                     "tokenizer alignment", key=("axis", out_name))
            return None
        if len({tuple(h.shape[1:]) for h in headers}) > 1:
            listing = ", ".join(f"{s.model} {tuple(h.shape)}" for s, h in zip(sources, headers))
            self.add(slice_.path, f"tensor {out_name} has different shapes beyond the vocabulary axis: {listing}",
                     "these models do not have the same shapes; they cannot be merged", key=("shape", out_name))
            return None
        base_ref = self.slice_base(slice_)
        request = RowsPlan([i.model for i in inputs], [h.shape[0] for h in headers],
                           next((j for j, s in enumerate(sources) if s.model == base_ref), None), [s.model for s in sources])
        try:
            rows = plan_rows(self.vocab, request)
        except TokenError as exc:
            self.add(exc.path, exc.message, exc.hint, key=("token", exc.message))
            return None
        self.unknown_tokens |= request.unknown
        return (self.vocab.size, *headers[0].shape[1:]), rows

    def load_models(self) -> list[ModelInfo]:
        models, paths = [], self.ref_paths()
        for ref in self.recipe.models():
            if ref.path in self.planned:
                if ref.lora:  # the stage's tensors do not exist yet, so there is nothing to apply it to
                    self.add(paths[ref], f"a LoRA adapter cannot be applied to the stage output '{ref.path}'",
                             "apply the adapter to a model inside that stage instead")
                models.append(self.planned[ref.path])
                continue
            try:
                models.append(load_model(ref, self.registry, self.recipe.dtype))
            except MergehubError as exc:
                self.add(paths[ref], exc.message, exc.hint)
        return models

    def ref_paths(self) -> dict[ModelRef, tuple]:
        paths: dict[ModelRef, tuple] = {}
        if self.recipe.base_model:
            paths[self.recipe.base_model] = ("base_model",)
        for slice_ in self.recipe.slices:
            for source in slice_.sources:
                paths.setdefault(source.model, source.path + ("model",))
            if slice_.base_model:
                paths.setdefault(slice_.base_model, slice_.path + ("base_model",))
        return paths

    def slice_base(self, slice_: Slice) -> ModelRef | None:
        return slice_.base_model or self.recipe.base_model

    def complete_slices(self) -> list[Slice]:
        """Fill in whole-model ranges (models: syntax) and check every slice's ranges."""
        slices = self.recipe.slices
        if self.recipe.syntax == "models":
            only = slices[0]
            sources = [Source(s.model, (0, self.layers_of(s.model)), s.parameters, s.path) for s in only.sources]
            base = self.recipe.base_model
            if base is not None and base not in [s.model for s in sources]:
                sources.append(Source(base, (0, self.layers_of(base)), {}, ("base_model",)))
            slices = [Slice(sources, None, {}, only.path)]
        for i, slice_ in enumerate(slices):
            self.check_ranges(slice_, i)
        return slices

    def layers_of(self, ref: ModelRef) -> int:
        return self.layout.num_layers(self.models[self.index[ref]])

    def check_ranges(self, slice_: Slice, i: int) -> None:
        before = len(self.problems)
        for source in slice_.sources:
            start, end = source.layer_range  # type: ignore[misc]
            available = self.layers_of(source.model)
            if end > available:
                self.add(source.path + ("layer_range",),
                         f"layer_range [{start}, {end}] goes past the end of {source.model}, which has {available} layers",
                         f"use an end of at most {available} (ranges are half-open: [0, {available}] is the whole model)")
        lengths = [s.layer_range[1] - s.layer_range[0] for s in slice_.sources]  # type: ignore[index]
        if len(set(lengths)) > 1:
            self.add(slice_.path, *slice_rule_message(slice_, i, self.recipe.syntax))
        refs = [s.model for s in slice_.sources]
        for ref in {r for r in refs if refs.count(r) > 1}:
            self.add(slice_.path, f"{ref} appears twice among the sources of one slice",
                     "list each model once per slice; to repeat layers, use another slice")
        if len(self.problems) > before:
            self.broken.add(id(slice_))

    # -- tensors -----------------------------------------------------------------------
    def expand(self, slices: list[Slice]) -> list[OutputTensor]:
        """Pre-layer tensors (and stacks before the main one) from the first slice's models, the
        layers slice by slice, then post-layer tensors (and later stacks) from the last slice's models."""
        out: list[OutputTensor] = []
        first, last = slices[0], slices[-1]
        for weight in self.layout.pre + self.stack_weights(first, "pre"):
            self.emit(out, weight, first, weight.name, [None] * len(first.sources), 0.0)
        offset = 0
        self.layer_sources = []
        for slice_ in slices:
            n = slice_.sources[0].layer_range[1] - slice_.sources[0].layer_range[0]  # type: ignore[index]
            for k in range(n if id(slice_) not in self.broken else 0):
                layers = [s.layer_range[0] + k for s in slice_.sources]  # type: ignore[index]
                self.layer_sources.append((self.index[slice_.sources[0].model], layers[0]))
                for weight in self.layout.layer:
                    self.emit(out, weight, slice_, weight.at(offset + k), layers, layer_position(k, n))
            offset += n
        for weight in self.stack_weights(last, "post") + self.layout.post:
            self.emit(out, weight, last, weight.name, [None] * len(last.sources), 0.0)
        return out

    def stack_weights(self, slice_: Slice, position: str) -> tuple[WeightDef, ...]:
        """The tensors of the other stacks (vision tower, encoder) at ``position``, merged whole."""
        config = self.models[self.index[slice_.sources[0].model]].config
        try:
            return tuple(w for stack in self.layout.stacks if stack.position == position for w in stack.expand(config))
        except MergehubError as exc:
            self.add(slice_.sources[0].path + ("model",), f"{slice_.sources[0].model}: {exc.message}", exc.hint)
            return ()

    def emit(self, out: list[OutputTensor], weight: WeightDef, slice_: Slice, out_name: str,
             layers: list[int | None], t: float) -> None:
        """Plan one output tensor from the sources of ``slice_`` (source layer ``layers[j]``)."""
        inputs, sources, has_own, lacking = [], [], False, []
        for source, layer in zip(slice_.sources, layers):
            m = self.index[source.model]
            name = weight.at(layer) if layer is not None else weight.name
            tied = weight.tied_to.replace("{layer}", str(layer)) if weight.tied_to else None
            if name in self.names[m]:
                inputs.append(InputTensor(m, name))
                has_own = True
            elif weight.varies:
                lacking.append(f"layer {layer} of {source.model}")
                continue
            elif tied and tied in self.names[m]:
                inputs.append(InputTensor(m, tied))
            elif weight.optional:
                continue
            else:
                self.add(source.path + ("model",), f"tensor {name} is missing from {source.model}",
                         "the checkpoint does not match its config.json, or the layer_range is wrong",
                         key=(str(source.model), name))
                continue
            sources.append(source)
        if lacking and inputs:
            having = ", ".join(f"layer {layers[j]} of {s.model}" for j, s in enumerate(sources))
            self.add(slice_.path, f"output tensor {out_name} would merge layers of different kinds: {having} "
                     f"has {weight.name.replace('{layer}', 'N')}, {', '.join(lacking)} does not",
                     "merge layers of the same kind (same position in the layer pattern): shift the layer_range "
                     "of one source", key=("kinds", str(slice_.path)))
            return
        if not inputs or (weight.optional and not has_own):
            return  # an optional tensor no input has (e.g. lm_head of tied models)
        base_ref = self.slice_base(slice_) if self.recipe.method.base != "ignored" else None
        base = next((i for i, s in enumerate(sources) if s.model == base_ref), None)
        params = [self.model_params(slice_, s, inp.name, t, is_base=(i == base)) for i, (s, inp) in enumerate(zip(sources, inputs))]
        shared = self.shared_params(slice_, out_name, t)
        if self.method_check is not None and self.complete(params, shared, base):
            problem = self.method_check(params, shared)
            if problem:
                self.add(slice_.path, f"{out_name}: {problem}", key=("check", problem))
        headers = [self.models[i.model].reader.header(i.name) for i in inputs]
        axis = self.vocab_axis(weight, headers, inputs)
        rows: VocabRows | None = None
        if axis is not None:
            aligned = self.aligned_shape(out_name, axis, slice_, sources, inputs, headers)
            if aligned is None:
                return
            shape, rows = aligned
        elif len({h.shape for h in headers}) > 1:
            listing = ", ".join(f"{s.model} {tuple(h.shape)}" for s, h in zip(sources, headers))
            hint = ("the models have different vocabulary sizes: set tokenizer_source: union (or base) to align "
                    "their vocabularies, or merge models that share a tokenizer"
                    if weight.vocab_axis is not None else "these models do not have the same shapes; they cannot be merged")
            self.add(slice_.path, f"tensor {out_name} has different shapes: {listing}", hint, key=("shape", out_name))
            return
        else:
            shape = tuple(headers[0].shape)
        in_dtypes = [h.dtype for h in headers]
        floating = all(d in dtypes.FLOATING for d in in_dtypes)
        recipe = self.recipe
        out_dtype = weight.force_dtype or ((recipe.out_dtype or recipe.dtype or dtypes.promote(in_dtypes)) if floating else in_dtypes[0])
        out.append(OutputTensor(out_name, inputs, base, params, shared, shape, in_dtypes,
                                recipe.dtype if floating else None, out_dtype, rows))

    def complete(self, params: list[dict[str, Any]], shared: dict[str, Any], base: int | None) -> bool:
        """Whether every parameter passed validation: a method's ``check`` never sees a rejected (dropped) one."""
        method = self.recipe.method
        for name in method.param_names():
            scope = method.param_scope(name)
            if scope == "shared" and name not in shared:
                return False
            if scope != "shared" and any(name not in p for i, p in enumerate(params)
                                         if scope == "input" or i != base):
                return False
        return True

    def model_params(self, slice_: Slice, source: Source, tensor: str, t: float, is_base: bool) -> dict[str, Any]:
        method = self.recipe.method
        levels = [source.parameters, slice_.parameters, self.recipe.parameters]
        resolved: dict[str, Any] = {}
        for name in method.param_names():
            scope = method.param_scope(name)
            if scope == "shared" or (scope == "non_base" and is_base):
                continue
            value = resolve(name, levels, tensor, t)
            self.store(resolved, name, value, source.path, f"{source.model}", tensor)
        return resolved

    def shared_params(self, slice_: Slice, tensor: str, t: float) -> dict[str, Any]:
        method = self.recipe.method
        levels = [slice_.parameters, self.recipe.parameters]
        resolved: dict[str, Any] = {}
        for name in method.param_names():
            if method.param_scope(name) == "shared":
                self.store(resolved, name, resolve(name, levels, tensor, t), slice_.path, "", tensor)
        return resolved

    def store(self, resolved: dict, name: str, value: Any, path: tuple, who: str, tensor: str) -> None:
        method = self.recipe.method
        if value is UNSET:
            defaults = method.defaults()
            if name in defaults:
                resolved[name] = defaults[name]
                return
            target = f" for {who}" if who else ""
            self.add(path, f"missing required parameter '{name}'{target} (first needed by {tensor})",
                     f"set parameters: {{{name}: …}} on this entry, on its slice, or at the top level",
                     key=(who, name))
            return
        problem = self.checker.check(name, value)
        if problem:
            self.add(path, f"parameter '{name}' for {tensor}: {problem}", key=("value", name, str(value)))  # type: ignore[arg-type]
            return
        resolved[name] = self.checker.coerce(name, value)

    def unused_tensor_warnings(self, tensors: list[OutputTensor]) -> list[str]:
        used = {(i.model, i.name) for t in tensors for i in t.inputs}
        warnings = []
        for m, model in enumerate(self.models):
            if not any(u[0] == m for u in used):
                continue
            unused = sorted(n for n in self.names[m] if (m, n) not in used and not self.layout.covers(n))
            if unused:
                shown = ", ".join(unused[:3]) + (" …" if len(unused) > 3 else "")
                warnings.append(f"{len(unused)} tensor(s) of {model.ref} are not part of the {self.layout.name} layout "
                                f"and are not written: {shown}")
        return warnings


def slice_rule_message(slice_: Slice, i: int, syntax: str) -> tuple[str, str]:
    """What to say when the sources of one slice cover different numbers of layers."""
    rows = [f"{s.model} {list(s.layer_range)} = {s.layer_range[1] - s.layer_range[0]} layers" for s in slice_.sources]  # type: ignore[index]
    if syntax == "models":
        return ("the models have different numbers of layers (" + "; ".join(rows) + ")",
                "models: merges whole models layer by layer, so they must be equally deep; "
                "use slices: and pick ranges of equal length from each model")
    message = f"slices[{i}]: every source of one slice must cover the same number of layers, but " + "; ".join(rows)
    example = "\n".join(f"  - sources: [{{model: {s.model}, layer_range: {list(s.layer_range)}}}]" for s in slice_.sources)  # type: ignore[arg-type]
    return message, ("give each range its own slice (slices are stacked in order):\n" + example +
                     "\nor change the ranges so that they have the same length")


def output_config(plan: Plan) -> dict[str, Any]:
    """The donor's config.json, updated to agree with what is written."""
    config = copy.deepcopy(plan.donor.config)
    recipe, layout = plan.recipe, plan.layout
    if recipe.syntax == "slices" and layout.num_layers_key:
        set_key(config, layout.num_layers_key, plan.num_layers)
    elif recipe.syntax == "slices" and plan.num_layers != layout.num_layers(plan.donor):
        plan.warnings.append("the architecture has no layer-count key, so config.json keeps the donor's layer count")
    if recipe.syntax == "slices":
        rebuild_layer_keys(plan, config)
    out_dtype = recipe.out_dtype or recipe.dtype
    if out_dtype:
        keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]
        for key in keys:
            config[key] = out_dtype
    if plan.vocab is not None:
        set_vocab_size(config, plan.vocab.size)
    if layout.tie_key:
        tied_defs = [w for w in layout.pre + layout.post if w.tied_to]
        if tied_defs:
            written = {t.name for t in plan.tensors}
            config[layout.tie_key] = not any(w.name in written for w in tied_defs)
    return config
