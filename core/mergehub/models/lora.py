"""LoRA adapters in PEFT's format: what an adapter changes in its base, and what mergehub refuses.

A recipe input ``base+adapter`` is the model PEFT's ``merge_and_unload()`` would give, but
nothing is merged ahead of time: this module reads and checks the adapter (:class:`Adapter`),
and :class:`mergehub.models.lorareader.LoraReader` presents base and adapter as one tensor reader
whose ``read`` / ``read_rows`` return ``W + scale · B A`` for the rows asked for, so memory
stays bounded by one block, as for any other input. The adapter is applied in the recipe's
``dtype`` (its working precision) when it has one: the result is PEFT's on the base loaded in
that dtype, whatever dtype the base checkpoint is stored in; without one, in the base's own
dtype (see :class:`~mergehub.models.lorareader.LoraReader` for the exact arithmetic).

What an adapter directory may hold, and how each part is honoured:

- ``adapter_config.json``: ``peft_type: LORA``; ``r`` and ``lora_alpha`` (scale ``alpha / r``,
  or ``alpha / sqrt(r)`` with ``use_rslora``); ``rank_pattern`` / ``alpha_pattern`` (per-module
  overrides, matched as PEFT matches them); ``target_modules``, ``exclude_modules``,
  ``layers_to_transform`` / ``layers_pattern`` and ``modules_to_save`` decide, as in PEFT, which
  modules the adapter's factors are applied to (factors of any other module are ignored, as PEFT
  ignores them); ``fan_in_fan_out`` (the base stores the weight transposed, as GPT-2's Conv1D does).
  Settings that change the maths beyond plain LoRA (DoRA, LoRA biases, other variants, inits
  that rewrite the base weights) are refused with :class:`MergehubError`.
- ``adapter_model.safetensors`` (preferred) or ``adapter_model.bin`` (loaded with
  ``torch.load(weights_only=True)``): ``<module>.lora_A.weight`` / ``lora_B.weight`` for linear
  layers, ``<module>.lora_embedding_A`` / ``lora_embedding_B`` for embeddings, and full tensors
  (``modules_to_save`` copies such as ``lm_head.weight``, embeddings PEFT saved as
  ``<module>.base_layer.weight``, trained biases) that replace the base's, as PEFT loads them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergehub.common.errors import MergehubError

if TYPE_CHECKING:
    import torch

    from mergehub.plugin.specs import TensorReader

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's preference order
PREFIX = "base_model.model."

CONVERT_HINT = ("merge it into its base with PEFT (merge_and_unload) and use the merged model directory, "
                "or retrain it as a plain LoRA")
#: Settings whose maths is not plain LoRA: (key, what it is). Truthy means "in use".
UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA) rescales every weight column by a learned magnitude",
    "lora_bias": "LoRA biases add a trained bias to each adapted layer",
    "use_qalora": "QA-LoRA pools the inputs of quantised layers",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "velora_config": "VeLoRA is a LoRA variant with its own forward pass",
    "alora_invocation_tokens": "activated LoRA (aLoRA) applies only after its invocation tokens",
    "monteclora_config": "MonteCLoRA is a LoRA variant with its own forward pass",
    "arrow_config": "Arrow routes between several LoRA experts",
    "kasa_config": "KaSA is a LoRA variant with its own forward pass",
    "trainable_token_indices": "trainable tokens replace single embedding rows",
    "layer_replication": "layer replication changes the model's layers",
    "target_parameters": "LoRA on bare parameters (e.g. MoE experts)",
}
#: ``init_lora_weights`` values that rewrite the base weights when PEFT loads the adapter.
BASE_REWRITING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")
#: ``init_lora_weights`` values that select a LoRA variant with its own maths.
VARIANT_INITS = ("mica",)


@dataclass(frozen=True)
class Factors:
    """The LoRA factors of one module: ``delta = scale · B A`` (transposed when ``transposed``)."""

    module: str  # the module's name in the base model, e.g. model.layers.0.self_attn.q_proj
    a: str  # adapter tensor names
    b: str
    scale: float
    transposed: bool  # embeddings and fan_in_fan_out layers store W as (B A)ᵀ
    embedding: bool  # PEFT rounds an embedding's delta to the model's dtype before adding it


def adapter_error(label: str, message: str, hint: str | None = None) -> MergehubError:
    return MergehubError(f"LoRA adapter {label}: {message}", hint=hint)


class AdapterWeights:
    """The tensors of ``adapter_model.safetensors`` (memory-mapped) or ``adapter_model.bin``."""

    def __init__(self, path: Path, label: str):
        self.path = path
        self.handle: Any = None
        self.tensors: dict[str, Any] | None = None
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                self.handle = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as exc:
                raise adapter_error(label, f"cannot open {path}: {exc}", "re-save or re-download the adapter") from exc
        else:
            self.tensors = load_bin(path, label)

    def names(self) -> list[str]:
        return list(self.handle.keys()) if self.handle is not None else list(self.tensors or {})

    def shape(self, name: str) -> tuple[int, ...]:
        if self.handle is not None:
            return tuple(self.handle.get_slice(name).get_shape())
        return tuple(self.tensors[name].shape)  # type: ignore[index]

    def get(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name) if self.handle is not None else self.tensors[name]  # type: ignore[index]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if self.handle is not None:
            return self.handle.get_slice(name)[start:stop]
        return self.tensors[name][start:stop]  # type: ignore[index]

    def close(self) -> None:
        self.handle = self.tensors = None


def load_bin(path: Path, label: str) -> dict[str, Any]:
    """A ``.bin`` state dict, unpickled with ``weights_only=True``: tensors only, never code."""
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # a pre-1.6 (non-zip) file cannot be memory-mapped; it is small anyway
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise adapter_error(label, f"{path} holds more than tensors, and loading it would run code",
                            "re-save the adapter as safetensors (save_pretrained(..., safe_serialization=True))") from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise adapter_error(label, f"cannot read {path}: {exc}", "re-save or re-download the adapter") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise adapter_error(label, f"{path} is not a state dict of tensors", "re-save the adapter with PEFT")
    return state


def read_adapter_config(directory: Path, label: str) -> dict[str, Any]:
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise adapter_error(label, f"{directory} has no {CONFIG}",
                            "point at a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise adapter_error(label, f"cannot read {path}: {exc}", "re-save or re-download the adapter") from exc
    if not isinstance(config, dict):
        raise adapter_error(label, f"{path} is not a JSON object", "re-save the adapter with PEFT")
    check_config(config, label)
    return config


def check_config(config: dict[str, Any], label: str) -> None:
    """Refuse every adapter whose arithmetic is not plain ``W + scale · B A``."""
    kind = config.get("peft_type")
    if kind != "LORA":
        raise adapter_error(label, f"peft_type is {kind!r}; only LoRA adapters (peft_type: LORA) can be applied",
                            CONVERT_HINT)
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise adapter_error(label, f"{key}: {json.dumps(config[key])} is not supported ({what})", CONVERT_HINT)
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower() in VARIANT_INITS:
        raise adapter_error(label, f"init_lora_weights: {init!r} is not supported (it selects a LoRA variant)",
                            CONVERT_HINT)
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        raise adapter_error(label, f"init_lora_weights: {init!r} is not supported: PEFT rewrites the base weights "
                            "with it when loading the adapter",
                            "convert the adapter to a plain LoRA when saving it (PEFT's "
                            "path_initial_model_for_weight_conversion), or " + CONVERT_HINT)
    for key in ("r", "lora_alpha"):
        value = config.get(key, 8)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise adapter_error(label, f"{key} must be a positive number, not {value!r}", "fix adapter_config.json")


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the end of the module's name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _listed(names: list[str] | str, module: str) -> bool:
    if isinstance(names, str):
        return re.fullmatch(names, module) is not None
    return module in names or any(module.endswith(f".{n}") for n in names)


def _layer_index(config: dict[str, Any], module: str) -> int | None:
    """The module's layer number as PEFT finds it: the first numbered segment (after ``layers_pattern``)."""
    patterns = config.get("layers_pattern") or []
    if not patterns:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        return int(found.group("idx")) if found else None
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if found := re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", module):
            return int(found.group("idx"))
    return None


def is_target(config: dict[str, Any], module: str, embedding: bool) -> bool:
    """Whether PEFT puts a LoRA layer on ``module`` (and so applies its factors)."""
    if config.get("exclude_modules") and _listed(config["exclude_modules"], module):
        return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in config.get("modules_to_save") or []):
        return False
    targets = config.get("target_modules")
    if targets is None:  # PEFT fills in its per-architecture default when it creates an adapter: take what is there
        return True
    if isinstance(targets, str):
        if targets.lower() == "all-linear":  # linear layers except the output head
            return not embedding and module.split(".")[-1] != "lm_head"
        return re.fullmatch(targets, module) is not None
    if module in targets:
        return True
    if not any(module.endswith(f".{t}") for t in targets):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = _layer_index(config, module)
    return index is not None and (index == layers if isinstance(layers, int) else index in layers)


class Adapter:
    """A validated adapter: which base tensors get a delta, and which are replaced outright."""

    def __init__(self, directory: Path, label: str):
        self.directory = directory
        self.label = label
        self.config = read_adapter_config(directory, label)
        weights = next((directory / w for w in WEIGHTS if (directory / w).is_file()), None)
        if weights is None:
            raise adapter_error(label, f"{directory} has no {' or '.join(WEIGHTS)}",
                                "the adapter's weights are missing; re-save or re-download it")
        self.weights = AdapterWeights(weights, label)
        self.deltas: dict[str, Factors] = {}
        self.replacements: dict[str, str] = {}  # base tensor -> adapter tensor
        self._classify()

    def _classify(self) -> None:
        factors: dict[tuple[str, bool], dict[str, str]] = {}
        for name in self.weights.names():
            if not name.startswith(PREFIX):
                raise adapter_error(self.label, f"tensor {name} does not start with '{PREFIX}'",
                                    "this is not a PEFT LoRA adapter for a transformers model")
            local = name[len(PREFIX):]
            found = re.fullmatch(r"(.+)\.lora_(A|B)\.weight|(.+)\.lora_embedding_(A|B)", local)
            if found:
                module, embedding = found.group(1) or found.group(3), found.group(3) is not None
                factors.setdefault((module, embedding), {})[found.group(2) or found.group(4)] = name
            elif ".lora_" in local:
                raise adapter_error(self.label, f"tensor {name} is not a plain LoRA factor", CONVERT_HINT)
            else:
                self.replacements[local.replace(".base_layer.", ".")] = name
        for (module, embedding), pair in factors.items():
            if set(pair) != {"A", "B"}:
                missing = "B" if "A" in pair else "A"
                raise adapter_error(self.label, f"module {module} has a lora_{'embedding_' if embedding else ''}{missing} "
                                    "factor missing", "the adapter file is incomplete; re-save it")
            try:
                if is_target(self.config, module, embedding):
                    self.deltas[f"{module}.weight"] = self._factors(module, embedding, pair)
            except re.error as exc:
                raise adapter_error(self.label, f"a module pattern in {CONFIG} is not a valid regular expression "
                                    f"({exc})", "fix target_modules, exclude_modules, rank_pattern or alpha_pattern") from exc
        if not self.deltas and not self.replacements:
            raise adapter_error(self.label, f"it changes nothing: {CONFIG}'s target_modules match none of the modules "
                                "it has factors for", "check target_modules (and layers_to_transform) in the adapter's config")

    def _factors(self, module: str, embedding: bool, pair: dict[str, str]) -> Factors:
        r = pattern_value(self.config.get("rank_pattern") or {}, module, self.config.get("r", 8))
        alpha = pattern_value(self.config.get("alpha_pattern") or {}, module, self.config.get("lora_alpha", 8))
        a, b = self.weights.shape(pair["A"]), self.weights.shape(pair["B"])
        if len(a) != 2 or len(b) != 2:
            raise adapter_error(self.label, f"module {module} has {len(a)}-D LoRA factors; only linear and embedding "
                                "layers are supported", CONVERT_HINT)
        if a[0] != r or b[1] != r:
            raise adapter_error(self.label, f"module {module}: adapter_config.json gives rank {r}, but its factors "
                                f"have shapes {list(a)} and {list(b)}", "fix r / rank_pattern in adapter_config.json")
        scale = alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r
        transposed = embedding or bool(self.config.get("fan_in_fan_out"))
        return Factors(module, pair["A"], pair["B"], scale, transposed, embedding)

    def check(self, base: TensorReader) -> None:
        """Every tensor the adapter changes exists in the base, with a shape that fits."""
        names = set(base.tensor_names())
        for target, source in self.replacements.items():
            self._expect(target, source, names)
            if self.weights.shape(source) != tuple(base.header(target).shape):
                raise adapter_error(self.label, f"{source} has shape {list(self.weights.shape(source))} but the base's "
                                    f"{target} has {list(base.header(target).shape)}",
                                    "apply the adapter to the model it was trained on (same vocabulary size)")
        for target, f in self.deltas.items():
            self._expect(target, f.a, names)
            a, b = self.weights.shape(f.a), self.weights.shape(f.b)
            shape = (a[1], b[0]) if f.transposed else (b[0], a[1])
            header = base.header(target)
            if tuple(header.shape) != shape:
                layout = "(B A)ᵀ" if f.transposed else "B A"
                raise adapter_error(self.label, f"the factors of {f.module} give a {layout} of shape {list(shape)}, but "
                                    f"the base's {target} has shape {list(header.shape)}",
                                    "apply the adapter to the model it was trained on; check fan_in_fan_out")
            if not header.dtype.startswith(("float", "bfloat")):
                raise adapter_error(self.label, f"the base's {target} is {header.dtype}, not a floating-point tensor",
                                    "LoRA applies to floating-point weights only")

    def _expect(self, target: str, source: str, names: set[str]) -> None:
        if target not in names:
            tied = " (are its lm_head and embeddings tied?)" if target == "lm_head.weight" else ""
            raise adapter_error(self.label, f"its tensor {source} belongs to {target}, which the base model does not "
                                f"have{tied}", "apply the adapter to the model it was trained on")

    def close(self) -> None:
        self.weights.close()
