"""Which module of the fine-tune becomes what in the adapter, and every adapter tensor's name, shape and dtype.

Both models are opened with the readers merges use (local directories or Hub ids with ``@revision``, any IO
backend, ``base+adapter`` references included) and their architecture layout says which tensors are input
embeddings (before the layers), which is the output head (a vocabulary tensor after them, possibly tied) and in
what order the modules come. As mergekit-extract-lora does:

- a 2-D ``weight`` of a selected module is factorised: ``lora`` (a linear layer) or ``embedding`` (an input
  embedding with ``--embed-lora``, factorised transposed as PEFT stores it);
- embeddings and the output head are saved whole (``modules_to_save``) without ``--embed-lora``, unless
  ``--exclude`` names them; so is every module ``--save-module`` names;
- a selected module without a 2-D weight (a norm) is saved whole when the fine-tune changed it, and left out
  with ``--skip-undecomposable``;
- a different vocabulary size turns ``--embed-lora`` off (the embeddings cannot be a delta), with a warning.

Differences from mergekit, each for PEFT's sake: an unchanged norm is not saved (the base has it); a linear
layer's changed bias is saved whole as PEFT's ``bias: lora_only`` keeps it (mergekit writes ``lora_B.bias``,
which PEFT ignores); a rank of 0 (``--sv-epsilon``, ``--rank-by``) leaves the module out; and with
``--embed-lora`` an output head tied to the embeddings in the base gets no factors of its own, since PEFT
would add them to the shared weight a second time.

Only headers are read here, plus the small tensors (biases, norms) whose change decides whether they are
saved. With ``--rank-by`` or ``--sv-epsilon`` each delta's singular values are computed first, to fix every
rank (and so every shape) before the streaming writer lays the file out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from mergehub.common import dtypes
from mergehub.common.errors import MergehubError
from mergehub.extract import adapter, svd
from mergehub.extract.options import ExtractOptions
from mergehub.models.architecture import Layout, resolve_layout
from mergehub.models.loader import ModelInfo, load_model
from mergehub.plan.planner import Output
from mergehub.plugin.registry import Registry
from mergehub.recipe.config import ModelRef

#: What becomes of a module: factorised (``lora``, ``embedding``), saved ``whole``, or left out (``unchanged``,
#: ``skipped`` by --skip-undecomposable, ``tied`` to an embedding whose factors cover it, ``dropped`` at rank 0).
FACTORISED = ("lora", "embedding")


@dataclass
class Module:
    name: str
    how: str
    reason: str = ""
    weight: str | None = None  # the fine-tune's tensor of the delta (a tied head: the embedding it is tied to)
    base_weight: str | None = None
    shape: tuple[int, ...] = ()  # of the weight as stored
    dtype: str = "float32"  # of the factors: the delta's (fine-tune and base promoted, as mergekit subtracts)
    rank: int = 0
    whole: list[tuple[str, str]] = field(default_factory=list)  # (adapter name, fine-tune tensor) saved whole
    bias: str | None = None  # a factorised layer's changed bias, saved whole
    stats: dict[str, Any] | None = None  # rank, error, norm once known

    @property
    def key(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def delta_shape(self) -> tuple[int, int]:
        """The matrix factorised: the weight, or its transpose for an embedding (PEFT's layout)."""
        rows, cols = self.shape
        return (cols, rows) if self.how == "embedding" else (rows, cols)


@dataclass
class AdapterTensor:
    """One tensor of ``adapter_model.safetensors``: a factor (``A``, ``B``), a ``bias`` or a ``whole`` tensor."""

    name: str
    module: int  # index into ExtractPlan.modules
    part: str
    shape: tuple[int, ...]
    out_dtype: str
    source: str | None = None  # the fine-tune's tensor, for bias and whole
    work: int = 0  # elements read to make it, for the progress bar

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.out_dtype, self.shape)


@dataclass
class ExtractPlan(Output):
    models: list[ModelInfo]  # the fine-tune, then the base
    refs: tuple[ModelRef, ModelRef]
    layout: Layout
    modules: list[Module]
    tensors: list[AdapterTensor] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    vocab: tuple[int, int] | None = None  # (fine-tune, base) rows when they differ

    @property
    def finetune(self) -> ModelInfo:
        return self.models[0]

    @property
    def base(self) -> ModelInfo:
        return self.models[1]

    def ranks(self) -> dict[str, int]:
        return {m.name: m.rank for m in self.modules if m.how in FACTORISED and m.rank > 0}

    def modules_to_save(self) -> list[str]:
        keys: list[str] = []
        for module in self.modules:
            if module.how == "whole" and module.key not in keys:
                keys.append(module.key)
        return keys


def open_model(text: str, option: str, registry: Registry) -> ModelInfo:
    try:
        return load_model(ModelRef.parse(text), registry)
    except ValueError as exc:
        raise MergehubError(f"{option} {text}: {exc}", hint="a local directory or a Hub id org/name[@revision]") from None
    except MergehubError as exc:
        exc.message = f"{option} {text}: {exc.message}"
        raise


def make_extract_plan(finetune: str, base: str, options: ExtractOptions, registry: Registry,
                      progress: Callable[[int, int], None] | None = None) -> ExtractPlan:
    """Open both models (headers only), decide every module, then every rank and tensor.

    ``progress(done, total)`` follows the singular-value pass that data-dependent ranks need.
    """
    models: list[ModelInfo] = []
    try:
        models.append(open_model(finetune, "--model", registry))
        models.append(open_model(base, "--base", registry))
        layout, warnings = resolve_layout(models, registry)
        plan = ExtractPlan(models, (models[0].ref, models[1].ref), layout, [], warnings=list(warnings))
        Classifier(plan, options).run()
        if not any(m.how in FACTORISED for m in plan.modules):
            raise MergehubError("no module to factorise: every selected module is saved whole, skipped or unchanged",
                                hint="check --include/--exclude/--save-module; a LoRA adapter needs at least one "
                                     "linear layer")
        if not options.fixed_ranks:
            decide_ranks(plan, options, progress)
        if not plan.ranks():
            raise MergehubError("every factorised module came out at rank 0 (no singular value is left by "
                                "--sv-epsilon / --rank-by): the fine-tune adds nothing a LoRA could hold",
                                hint="lower --sv-epsilon, or raise the --rank-by energy share")
        plan.tensors = adapter_tensors(plan)
        return plan
    except BaseException:
        for model in models:
            model.close()
        raise


class Classifier:
    """Decides what each module of the fine-tune becomes (see the module docstring)."""

    def __init__(self, plan: ExtractPlan, options: ExtractOptions):
        self.plan, self.options = plan, options
        self.ft, self.base = plan.finetune.reader, plan.base.reader
        self.ft_names, self.base_names = set(self.ft.tensor_names()), set(self.base.tensor_names())
        layout = plan.layout
        self.tied = {w.name: w.tied_to for w in layout.pre + layout.layer + layout.post if w.tied_to}
        self.inputs = {w.name for w in layout.pre}
        self.heads = {w.name for w in layout.post if w.vocab_axis is not None or w.tied_to}
        self.problems: list[str] = []

    def run(self) -> None:
        modules = grouped(ordered_names(self.plan, self.ft_names, self.tied))
        differs = self.vocab_differs(modules)  # also for the card, without --embed-lora
        embed_lora = self.options.embed_lora and not differs
        for name, params in modules.items():
            module = self.classify(name, params, embed_lora)
            if module is not None:
                module.shape = module.shape or tuple(self.ft.header(params.get("weight") or
                                                                    next(iter(params.values()))).shape)
                self.plan.modules.append(module)
        if self.problems:
            more = len(self.problems) - 5
            shown = "; ".join(self.problems[:5]) + (f"; and {more} more" if more > 0 else "")
            raise MergehubError(f"the base does not match the fine-tune: {shown}",
                                hint="--base must be the model the fine-tune was trained from (same architecture "
                                     "and sizes)")

    def vocab_differs(self, modules: dict[str, dict[str, str]]) -> bool:
        for name, params in modules.items():
            if "weight" not in params or not self.is_embedding(name):
                continue
            base = self.in_base(f"{name}.weight")
            ft_shape = tuple(self.ft.header(params["weight"]).shape)
            base_shape = tuple(self.base.header(base).shape) if base else None
            if base_shape is not None and ft_shape[0] != base_shape[0] and ft_shape[1:] == base_shape[1:]:
                self.plan.vocab = (ft_shape[0], base_shape[0])
                if self.options.embed_lora:
                    self.plan.warnings.append(f"the fine-tune has {ft_shape[0]} embedding rows and the base "
                                              f"{base_shape[0]}: embeddings are saved whole (modules_to_save) "
                                              "instead of --embed-lora")
                return True
        return False

    def is_embedding(self, module: str) -> bool:
        """An input embedding (a weight before the layers) or the output head (a vocabulary tensor after them)."""
        weight = f"{module}.weight"
        return weight in self.inputs or weight in self.heads or module.rsplit(".", 1)[-1] == "lm_head"

    def in_base(self, tensor: str) -> str | None:
        """The base's tensor for ``tensor``: its own, else the one it is tied to."""
        if tensor in self.base_names:
            return tensor
        tied = self.tied.get(tensor)
        return tied if tied in self.base_names else None

    def classify(self, name: str, params: dict[str, str], embed_lora: bool) -> Module | None:
        options = self.options
        logical = f"{name}.weight"
        header = self.ft.header(params["weight"]) if "weight" in params else None
        matrix = header is not None and len(header.shape) == 2 and header.dtype in dtypes.FLOATING
        embedding = self.is_embedding(name) and matrix
        if options.saved_whole(name):
            return self.whole(name, params, "--save-module")
        if embedding and not embed_lora and not options.excluded(name):
            return self.whole(name, params, "embedding" if self.plan.vocab is None else "embedding, vocabularies differ")
        if not options.selected(name):
            return None
        if matrix:
            head = embedding and logical not in self.inputs
            if head and logical not in self.ft_names and logical not in self.base_names:
                return Module(name, "tied", f"to {self.tied.get(logical)}, whose factors change it too")
            if head and logical not in self.base_names:
                return self.whole(name, params, "tied in the base only")
            return self.factorised(name, params, "embedding" if embedding and not head else "lora")
        if options.skip_undecomposable:
            return Module(name, "skipped", "undecomposable, --skip-undecomposable")
        if all(self.unchanged(f"{name}.{param}", source) for param, source in params.items()):
            return Module(name, "unchanged", "undecomposable, the same in both models")
        return self.whole(name, params, "undecomposable")

    def whole(self, name: str, params: dict[str, str], reason: str) -> Module:
        tensors = [(adapter.whole_name(f"{name}.{param}"), source) for param, source in params.items()]
        return Module(name, "whole", reason, whole=tensors)

    def factorised(self, name: str, params: dict[str, str], how: str) -> Module:
        source = params["weight"]
        base = self.in_base(f"{name}.weight")
        shape = tuple(self.ft.header(source).shape)
        if base is None:
            self.problems.append(f"the base has no {name}.weight")
            return Module(name, how)
        base_header = self.base.header(base)
        if tuple(base_header.shape) != shape:
            self.problems.append(f"{name}.weight is {list(shape)} in the fine-tune but {list(base_header.shape)} "
                                 "in the base")
            return Module(name, how)
        dtype = dtypes.promote([self.ft.header(source).dtype, base_header.dtype])
        module = Module(name, how, "", weight=source, base_weight=base, shape=shape, dtype=dtype,
                        rank=min(self.options.rank, *shape))
        for param, tensor in params.items():
            if param == "bias" and not self.unchanged(f"{name}.bias", tensor):
                if f"{name}.bias" not in self.base_names:
                    self.problems.append(f"{name} has a bias in the fine-tune but none in the base")
                module.bias = tensor
            elif param not in ("weight", "bias"):
                self.plan.warnings.append(f"{name}.{param} is neither the weight nor the bias of a linear layer: "
                                          "it is not part of the adapter")
        return module

    def unchanged(self, tensor: str, source: str) -> bool:
        """Whether the base has ``tensor`` with the values the fine-tune holds in ``source`` (row blocks)."""
        base = self.in_base(tensor)
        if base is None:
            return False
        a, b = self.ft.header(source), self.base.header(base)
        if tuple(a.shape) != tuple(b.shape):
            return False
        if not a.shape:
            return _same(self.ft.read(source), self.base.read(base))
        for start, stop in row_blocks(tuple(a.shape), 8, self.options.max_memory):
            if not _same(self.ft.read_rows(source, start, stop), self.base.read_rows(base, start, stop)):
                return False
        return True


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype:
        common = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(common), b.to(common)
    return bool(torch.equal(a, b))


def ordered_names(plan: ExtractPlan, present: set[str], tied: dict[str, str]) -> dict[str, str]:
    """Every tensor of the fine-tune (name -> the tensor holding it), in layout order (pre, layers, post, the
    rest), with tied tensors (a head the checkpoint leaves out) held by what they are tied to."""
    layout, model = plan.layout, plan.finetune
    names: list[str] = [w.name for w in layout.pre]
    try:
        layers = layout.num_layers(model)
        names += [w.at(i) for i in range(layers) for w in layout.layer]
        for stack in layout.stacks:
            names += [w.name for w in stack.expand(model.config)]
    except MergehubError:  # a layout that cannot say its layers: the checkpoint's own order
        pass
    names += [w.name for w in layout.post]
    result: dict[str, str] = {}
    for name in names + list(plan.finetune.reader.tensor_names()):
        if name in result:
            continue
        if name in present:
            result[name] = name
        elif tied.get(name) in present:
            result[name] = tied[name]
    return result


def grouped(names: dict[str, str]) -> dict[str, dict[str, str]]:
    """Tensors by module (the name without its last part), in first-seen order: module -> {param: tensor}."""
    modules: dict[str, dict[str, str]] = {}
    for name, source in names.items():
        module, _, param = name.rpartition(".")
        modules.setdefault(module, {})[param] = source
    return modules


def row_blocks(shape: tuple[int, ...], bytes_per_element: int, max_memory: int) -> Iterator[tuple[int, int]]:
    """Row ranges of a tensor of ``shape`` whose working copies (``bytes_per_element`` per element) fit."""
    rows = shape[0] if shape else 1
    per_row = max(1, bytes_per_element * math.prod(shape[1:]))
    step = max(1, max_memory // per_row)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def load_delta(plan: ExtractPlan, module: Module, device: str, max_memory: int) -> torch.Tensor:
    """``W_fine-tune − W_base`` on ``device``, read in row blocks: subtracted in the inputs' (promoted) dtype, as
    mergekit does, then held in float32 for the SVD; transposed (a view) for an embedding, the matrix PEFT's
    ``lora_embedding_B @ lora_embedding_A`` stands for."""
    assert module.weight is not None and module.base_weight is not None
    ft, base = plan.finetune.reader, plan.base.reader
    delta = torch.empty(module.shape, dtype=torch.float32, device=device)
    for start, stop in row_blocks(module.shape, 12, max_memory):  # two inputs, their difference, its float32 copy
        rows = ft.read_rows(module.weight, start, stop).to(device)
        delta[start:stop] = rows - base.read_rows(module.base_weight, start, stop).to(device)
    return delta.T if module.how == "embedding" else delta


def decide_ranks(plan: ExtractPlan, options: ExtractOptions, progress: Callable[[int, int], None] | None) -> None:
    """Each factorised module's rank from its singular values (--rank-by, --sv-epsilon)."""
    chosen = [m for m in plan.modules if m.how in FACTORISED]
    for done, module in enumerate(chosen):
        singular = svd.singular_values(load_delta(plan, module, options.device, options.max_memory)).cpu()
        module.rank = svd.choose_rank(singular, options.rank, options.energy, options.sv_epsilon)
        if module.rank == 0:  # PEFT has no rank 0: the module is left out, its delta with it
            norm = float(singular.double().square().sum().sqrt())
            module.how, module.reason = "dropped", "no singular value kept"
            module.stats = {"rank": 0, "error": 1.0 if norm > 0 else 0.0, "norm": norm}
        if progress:
            progress(done + 1, len(chosen))


def adapter_tensors(plan: ExtractPlan) -> list[AdapterTensor]:
    tensors: list[AdapterTensor] = []
    ft = plan.finetune.reader
    for index, module in enumerate(plan.modules):
        if module.how in FACTORISED and module.rank > 0:
            rows, cols = module.delta_shape
            a, b = adapter.factor_names(module.name, module.how == "embedding")
            tensors.append(AdapterTensor(a, index, "A", (module.rank, cols), module.dtype, work=rows * cols))
            tensors.append(AdapterTensor(b, index, "B", (rows, module.rank), module.dtype))
            if module.bias is not None:
                header = ft.header(module.bias)
                tensors.append(AdapterTensor(adapter.bias_name(module.name), index, "bias", tuple(header.shape),
                                             header.dtype, module.bias, work=_elements(header.shape)))
        elif module.how == "whole":
            for name, source in module.whole:
                header = ft.header(source)
                tensors.append(AdapterTensor(name, index, "whole", tuple(header.shape), header.dtype, source,
                                             work=_elements(header.shape)))
    return tensors


def _elements(shape: Any) -> int:
    return math.prod(int(size) for size in shape)
