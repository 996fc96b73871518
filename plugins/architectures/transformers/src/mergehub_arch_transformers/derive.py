"""Derive an architecture definition from transformers itself.

The model class named by ``config.json`` is built on the meta device (no memory for weights, no
tensor read), and its state dict says everything a definition needs: which tensors exist and in
what order (before, inside and after the decoder stack), which layers have which tensors, which
tensors are tied and which are indexed by token id. The config class says which per-layer keys
the family uses and what they hold when ``config.json`` leaves them out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from mergehub import ArchitectureSpec

LAYER = re.compile(r"\.(\d+)\.")
#: Below this share of the expected tensors, a checkpoint uses other names (an older format): not ours.
MIN_OVERLAP = 0.9
CHECK = "mergehub_arch_transformers.check:check_config"


@dataclass(frozen=True)
class MetaModel:
    """What the meta-device model tells: tensor names and shapes in module order, ties, vocabulary tensors."""

    shapes: dict[str, tuple[int, ...]]
    tied: dict[str, str]  # target -> source, as this config ties them
    tieable: dict[str, str]  # the same for a config that ties embeddings: what a tied checkpoint may leave out
    vocab: frozenset[str]
    embedding: str | None  # name of the input embedding weight


def derive(config: dict[str, Any], tensor_names: list[str], trust_remote_code: bool = False) -> ArchitectureSpec | None:
    """A definition for the model of ``config`` whose weight files hold ``tensor_names``, or None
    when transformers cannot build it or the files use other names."""
    if model_class(config) is None:
        return None
    present = set(tensor_names)
    # the naming the checkpoint uses; tied tensors (left out of the overlap) break ties: GPT-NeoX's embed_out
    meta = max(build_meta(json.dumps(config, sort_keys=True)),
               key=lambda m: (overlap(m, present), sum(n in present for n in m.shapes)))
    if overlap(meta, present) < MIN_OVERLAP:
        return None
    return ArchitectureSpec(name=str(config.get("model_type") or "transformers"),
                            definition=definition(config, meta, present))


def overlap(meta: MetaModel, present: set[str]) -> float:
    """The share of the tensors ``meta`` expects that a checkpoint holding ``present`` has."""
    expected = [n for n in meta.shapes if n not in meta.tieable]
    return sum(n in present for n in expected) / len(expected) if expected else 0.0


def model_class(config: dict[str, Any]) -> type | None:
    """transformers' class for ``architectures[0]``, or the causal-LM class of its model_type.

    Classes that only exist as remote code (``auto_map``) are never imported here.
    """
    import transformers

    names = config.get("architectures") or []
    if names and hasattr(transformers, names[0]):
        return getattr(transformers, names[0])
    model_type = config.get("model_type")
    for mapping in ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"):
        name = getattr(transformers.models.auto.modeling_auto, mapping, {}).get(model_type)
        if name and not names and hasattr(transformers, name):
            return getattr(transformers, name)
    return None


def make_config(config: dict[str, Any]) -> Any:
    """transformers' config object for ``config`` (sub-configs included)."""
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))


@lru_cache(maxsize=16)
def build_meta(config_json: str) -> tuple[MetaModel, ...]:
    """Build the model on the meta device and describe it twice: with the names its state dict uses,
    and with the names ``save_pretrained`` writes (transformers converts some families back to their
    original checkpoint format: Gemma 3's ``language_model.model.``, Mixtral's per-expert tensors).
    Ties the class declares count as tieable even when this config unties them, so merging a tied
    with an untied model can use the tied one's embedding."""
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()
    config = json.loads(config_json)
    cls = model_class(config)
    made = make_config(config)
    with torch.device("meta"):
        model = cls._from_config(made)
    state = model.state_dict()
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    tieable = dict(tied)
    if not tied and isinstance(getattr(cls, "_tied_weights_keys", None), dict):
        tieable = {k: v for k, v in cls._tied_weights_keys.items() if k in state and v in state}
    live = MetaModel({n: tuple(t.shape) for n, t in state.items()}, tied, tieable,
                     frozenset(_vocab_tensors(model)), _param_name(model, model.get_input_embeddings()))
    saved = _as_saved(model, state, live, int(made.get_text_config().num_hidden_layers))
    return (live, saved) if saved is not None else (live,)


def _as_saved(model: Any, state: dict[str, Any], live: MetaModel, num_layers: int) -> MetaModel | None:
    """``live`` renamed (and regrouped) as ``save_pretrained`` writes it, or None when it is the same."""
    from transformers.core_model_loading import revert_weight_conversion

    try:
        saved = revert_weight_conversion(model, dict(state))
    except Exception:  # a conversion that needs real data: the checkpoint can only use live names
        return None
    if list(saved) == list(state):
        return None
    stack = main_stack(live, num_layers)
    rename: dict[str, str] = {}
    for name in state:  # one by one, outside the layers: fixed tensors keep their module order
        if stack is None or not name.startswith(stack + "."):
            one = _revert_one(model, name, state[name])
            rename[name] = one or name
    order = {rename[n]: i for i, n in enumerate(state) if n in rename}
    layers_at = next((i for i, n in enumerate(state) if n not in rename), len(state))  # converted tensors: the layers
    names = sorted(saved, key=lambda n: order.get(n, layers_at))
    shapes = {n: tuple(saved[n].shape) for n in names}
    pick = lambda pairs: {rename.get(k, k): rename.get(v, v) for k, v in pairs.items()}  # noqa: E731
    embedding = rename.get(live.embedding, live.embedding) if live.embedding else None
    return MetaModel(shapes, pick(live.tied), pick(live.tieable), frozenset(rename.get(n, n) for n in live.vocab), embedding)


def _revert_one(model: Any, name: str, tensor: Any) -> str | None:
    from transformers.core_model_loading import revert_weight_conversion

    try:
        out = revert_weight_conversion(model, {name: tensor})
    except Exception:
        return None
    return next(iter(out)) if len(out) == 1 else None


def _param_name(model: Any, module: Any) -> str | None:
    if module is None:
        return None
    return next((f"{name}.weight" if name else "weight" for name, m in model.named_modules() if m is module), None)


def _vocab_tensors(model: Any) -> list[str]:
    """The input embedding and the output head (weight and bias): one row per token."""
    names = [_param_name(model, model.get_input_embeddings())]
    output = model.get_output_embeddings()
    head = _param_name(model, output)
    if head:
        names.append(head)
        if getattr(output, "bias", None) is not None:
            names.append(head.removesuffix("weight") + "bias")
    return [n for n in names if n]


def main_stack(meta: MetaModel, num_layers: int) -> str | None:
    """The prefix of the text decoder's layers: the layer list beside the input embedding, else the
    stack with the config's layer count."""
    counts: dict[str, set[int]] = {}
    for name in meta.shapes:
        if match := LAYER.search(name):
            counts.setdefault(name[: match.start()], set()).add(int(match.group(1)))
    parent = meta.embedding.rsplit(".", 2)[0] if meta.embedding and meta.embedding.count(".") >= 2 else ""
    fitting = [p for p, idx in counts.items() if len(idx) == num_layers]
    beside = [p for p in fitting if p.rsplit(".", 1)[0] == parent]
    return (beside or fitting or [None])[0]


def definition(config: dict[str, Any], meta: MetaModel, present: set[str]) -> dict[str, Any]:
    """The definition (core architecture schema) for a model of ``config`` with tensors ``present``."""
    text_key = "text_config." if isinstance(config.get("text_config"), dict) and "num_hidden_layers" in config["text_config"] else ""
    cfg = make_config(config)
    text = cfg.get_text_config()
    num_layers = int(text.num_hidden_layers)
    prefix = main_stack(meta, num_layers)
    pre, post, templates = [], [], {}
    for name in meta.shapes:
        match = LAYER.search(name)
        if prefix is not None and match and name[: match.start()] == prefix:
            template = f"{prefix}.{{layer}}.{name[match.end():]}"
            templates.setdefault(template, set()).add(int(match.group(1)))
            continue
        (post if templates else pre).append(_weight(name, meta, present))
    layers = [{"name": t, **({"varies": True} if len(found) < num_layers else {})} for t, found in templates.items()]
    layer_key, values = _layer_config(config, text, text_key)
    return {
        "name": str(config.get("model_type") or "transformers"),
        "description": f"derived from transformers' {model_class(config).__name__}",
        "architectures": list(config.get("architectures") or [model_class(config).__name__]),
        "model_type": str(config.get("model_type") or ""),
        "num_layers_key": text_key + type(text).attribute_map.get("num_hidden_layers", "num_hidden_layers"),
        "tie_embeddings_key": _tie_key(config, text_key),
        "pre_weights": pre,
        "layer_weights": layers,
        "post_weights": post,
        "layer_config": layer_key,
        "layer_values": values,
        "check_config": CHECK,
    }


def _tie_key(config: dict[str, Any], text_key: str) -> str:
    """Where the family keeps ``tie_word_embeddings``: at the top level, else beside the text layers."""
    nested = text_key and "tie_word_embeddings" in config["text_config"] and "tie_word_embeddings" not in config
    return text_key + "tie_word_embeddings" if nested else "tie_word_embeddings"


def _weight(name: str, meta: MetaModel, present: set[str]) -> dict[str, Any]:
    """One fixed tensor. A tied target is optional (tied checkpoints leave it out)."""
    entry: dict[str, Any] = {"name": name}
    if name in meta.tieable:
        entry |= {"optional": True, "tied_to": meta.tieable[name]}
    if name in meta.vocab:
        entry["vocab_axis"] = 0
    return entry


def _layer_config(config: dict[str, Any], text: Any, text_key: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The per-layer keys this model's config has, and the values transformers derives for those
    its config.json leaves out (so that the output can state them)."""
    raw = config.get("text_config") if text_key else config
    filled = text.to_dict()
    entries, values = [], {}
    for entry in _known_keys():
        key = entry["key"]
        if key not in filled or filled[key] is None:
            continue
        entries.append({**entry, "key": text_key + key,
                        **({"explicit": text_key + entry["explicit"]} if "explicit" in entry else {})})
        if raw.get(key) is None:
            values[text_key + key] = filled[key]
    return entries, values


@lru_cache(maxsize=1)
def _known_keys() -> list[dict[str, Any]]:
    text = resources.files("mergehub_arch_transformers").joinpath("layer_keys.json").read_text("utf-8")
    return json.loads(text)["keys"]
