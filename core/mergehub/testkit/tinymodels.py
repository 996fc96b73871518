"""Tiny random Hugging Face checkpoints of real model families, for tests of merging.

A merge tool has to cope with what real checkpoints look like: fused expert tensors, layers
that differ from their neighbours (sliding and global attention, linear and full attention,
dense and MoE feed-forwards, layers without RoPE), nested ``text_config`` / ``vision_config``
and tied or untied embeddings. Building those with transformers' own classes and
``save_pretrained`` keeps the tests honest about names, shapes and ``config.json`` without
downloading anything.

:func:`tiny_config` shrinks the defaults of any ``model_type`` transformers knows (every
size-like field, also inside nested sub-configs); :data:`FAMILIES` only holds what that generic
shrink gets wrong or leaves out for a family, mostly settings that make its layers differ within
four layers. :func:`build_tiny` instantiates and saves a model from such a config.

This module is imported by a pytest plugin, so torch and transformers are imported inside the
functions that need them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class Family:
    """A model family: the config's ``model_type``, the class that saves it and what to change.

    ``overrides`` are config fields applied after the generic shrink; a dict under a sub-config
    key (``text_config``, ``vision_config``) is merged into that sub-config, and naming an
    optional sub-config (None by default) is what builds that tower at all. A callable value is
    called with the number of layers, for lists that must have one entry per layer.
    """

    model_type: str
    architecture: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _alternating(first: str, second: str) -> Callable[[int], list[str]]:
    """``layer_types`` alternating between two kinds, ending on ``second`` for an even count."""
    return lambda layers: [second if i % 2 else first for i in range(layers)]


# gemma4 derives a 5:1 pattern (and forces the last layer global, with a warning); with k_eq_v its
# global layers have their own head_dim and kv heads (per_layer_config) and no v_proj.
_GEMMA4_TEXT = {"layer_types": _alternating("sliding_attention", "full_attention"), "global_head_dim": 16,
                "attention_k_eq_v": True, "num_global_key_value_heads": 1}

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaForCausalLM"),
    "mistral": Family("mistral", "MistralForCausalLM"),
    # qwen2/qwen3: layer_types stays what the config derives (all full attention without sliding window)
    "qwen2": Family("qwen2", "Qwen2ForCausalLM"),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM"),
    # layer 0 dense, the others sparse (real Qwen3-MoE checkpoints are all sparse; variety is the point)
    "qwen3_moe": Family("qwen3_moe", "Qwen3MoeForCausalLM", {"mlp_only_layers": [0]}),
    # full_attention_interval is read once to derive layer_types: linear, full, linear, full
    "qwen3_5": Family("qwen3_5_text", "Qwen3_5ForCausalLM", {"full_attention_interval": 2}),
    "qwen3_5_vl": Family("qwen3_5", "Qwen3_5ForConditionalGeneration",
                         {"text_config": {"full_attention_interval": 2}, "vision_config": {}}),
    "qwen3_next": Family("qwen3_next", "Qwen3NextForCausalLM", {"full_attention_interval": 2}),
    # gemma2 already alternates sliding and global layers
    "gemma2": Family("gemma2", "Gemma2ForCausalLM"),
    "gemma3": Family("gemma3_text", "Gemma3ForCausalLM", {"sliding_window_pattern": 2}),
    "gemma3_vl": Family("gemma3", "Gemma3ForConditionalGeneration",
                        {"text_config": {"sliding_window_pattern": 2}, "mm_tokens_per_image": 4}),
    "gemma4": Family("gemma4_text", "Gemma4ForCausalLM", _GEMMA4_TEXT),
    "gemma4_vl": Family("gemma4", "Gemma4ForConditionalGeneration", {"text_config": _GEMMA4_TEXT, "vision_config": {}}),
    "phi3": Family("phi3", "Phi3ForCausalLM"),
    "mixtral": Family("mixtral", "MixtralForCausalLM"),
    "deepseek_v3": Family("deepseek_v3", "DeepseekV3ForCausalLM", {"first_k_dense_replace": 1}),
    "olmo2": Family("olmo2", "Olmo2ForCausalLM"),
    "glm4": Family("glm4", "Glm4ForCausalLM"),
    "granite": Family("granite", "GraniteForCausalLM"),
    "starcoder2": Family("starcoder2", "Starcoder2ForCausalLM"),
    "gpt_neox": Family("gpt_neox", "GPTNeoXForCausalLM"),
    "phi": Family("phi", "PhiForCausalLM"),
    "cohere2": Family("cohere2", "Cohere2ForCausalLM", {"sliding_window_pattern": 2}),
    "exaone4": Family("exaone4", "Exaone4ForCausalLM", {"sliding_window_pattern": 2}),
    # MoE on odd layers; no_rope_layer_interval stays 4, so layer 3 has no RoPE
    "llama4_text": Family("llama4_text", "Llama4ForCausalLM", {"interleave_moe_layer_step": 2}),
    # the vision MLP takes the pixel-shuffled patches: hidden_size / pixel_shuffle_ratio**2 wide
    "llama4": Family("llama4", "Llama4ForConditionalGeneration",
                     {"text_config": {"interleave_moe_layer_step": 2}, "vision_config": {"intermediate_size": 128}}),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration",
                         {"vision_config": {"fullatt_block_indexes": [1], "window_size": 32}}),
}


def _layers(layers: int, vocab: int) -> int:
    """Size of the fields that count decoder layers: the requested number, not a cap."""
    return layers


def _vocab(layers: int, vocab: int) -> int:
    """Size of the fields that count tokens: the requested vocabulary, not a cap."""
    return vocab


# Size-like fields and the largest value a tiny model keeps; a default that is already smaller
# (or None: "not used") stays. Callables get (layers, vocab) and set the value exactly.
_Size = int | Callable[[int, int], int]
_TEXT_SIZES: dict[str, _Size] = {
    "hidden_size": 32, "intermediate_size": 64, "intermediate_size_mlp": 64, "ffn_hidden_size": 64,
    "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "num_hidden_layers": _layers, "max_window_layers": _layers,
    "first_k_dense_replace": 1,
    "vocab_size": _vocab, "vocab_size_per_layer_input": _vocab,
    "hidden_size_per_layer_input": 8,
    "max_position_embeddings": 128, "original_max_position_embeddings": 128,
    "sliding_window": 16, "attention_chunk_size": 16, "query_pre_attn_scalar": 8,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
    "num_experts_per_tok": 2, "top_k_experts": 2, "moe_topk": 2, "n_shared_experts": 1,
    "n_group": 1, "topk_group": 1,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
    "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "index_head_dim": 8, "index_n_heads": 2, "index_topk": 16,
    # the same sizes under older or encoder-decoder names (GPT-2, GPT-J, MPT, XGLM, BART...)
    "n_embd": 32, "d_model": 32, "n_inner": 64, "d_inner": 64, "ffn_dim": 64, "d_ff": 64,
    "n_head": 4, "n_heads": 4, "num_heads": 4, "attention_heads": 4, "d_kv": 8, "kv_channels": 8, "rotary_dim": 4,
    "n_layer": _layers, "n_layers": _layers,
    "num_layers": _layers, "decoder_layers": _layers,
    "encoder_layers": _layers,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "n_positions": 128, "n_ctx": 128, "seq_length": 128,
}
# Fields whose None default ("derive it") some models cannot handle, while the tiny value is safe.
_WHEN_NONE = ("head_dim", "num_key_value_heads")
# Vision and audio towers: 2 layers of width 32, 32x32 images of 8x8 patches.
_TOWER_SIZES: dict[str, _Size] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "depth": 2,
    "num_attention_heads": 2, "num_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
    "image_size": 32, "patch_size": 8, "num_position_embeddings": 16, "position_embedding_size": 64,
    "max_position_embeddings": 128, "vision_output_dim": 32, "projector_input_dim": 32, "projector_output_dim": 32,
}


def family(family_or_model_type: str) -> Family:
    """The :data:`FAMILIES` entry, or a generic one for any other ``model_type`` transformers knows.

    The generic architecture is the first causal LM, else image-text-to-text, class of
    transformers' auto mappings for the model type whose config class is that model type's own:
    the causal LM mapping also names text-only classes for multimodal types (``qwen3_5`` maps to
    ``Qwen3_5ForCausalLM``, which takes the nested text config, not ``Qwen3_5Config``).
    """
    if family_or_model_type in FAMILIES:
        return FAMILIES[family_or_model_type]
    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    names = [mapping[family_or_model_type] for mapping in (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
             if family_or_model_type in mapping]
    if not names:
        raise KeyError(f"{family_or_model_type!r} is neither a family ({', '.join(sorted(FAMILIES))}) "
                       "nor a model_type with a causal LM or image-text-to-text class in transformers")
    config_cls = transformers.CONFIG_MAPPING[family_or_model_type]
    own = [name for name in names if getattr(getattr(transformers, name, None), "config_class", None) is config_cls]
    return Family(family_or_model_type, (own or names)[0])


def tiny_config(family_or_model_type: str, *, layers: int = 4, vocab: int = 96, tied: bool | None = None,
                **overrides: Any) -> PretrainedConfig:
    """A config of the family with every size shrunk, the family's overrides, then ``overrides``.

    ``tied`` None keeps the family's default for ``tie_word_embeddings``; True/False sets it at the
    top level and in ``text_config`` (multimodal configs read it at the top in transformers 5,
    older code and checkpoints in the text config).
    """
    from transformers import CONFIG_MAPPING

    fam = family(family_or_model_type)
    config_cls = CONFIG_MAPPING[fam.model_type]
    extra = _merged(_resolved(fam.overrides, layers), _resolved(overrides, layers))
    kwargs = _merged(_shrunk_fields(config_cls, layers, vocab, requested=set(extra)), extra)
    if tied is not None:
        kwargs["tie_word_embeddings"] = tied
        if "text_config" in kwargs:
            kwargs["text_config"]["tie_word_embeddings"] = tied
    return config_cls(**kwargs)


def build_tiny(path: Path | str, family_or_model_type: str, *, layers: int = 4, seed: int = 0, dtype: str = "float32",
               tied: bool | None = None, vocab: int = 96, **overrides: Any) -> Path:
    """Save a tiny random model of the family at ``path`` with transformers' ``save_pretrained``.

    Every parameter gets N(0, 0.02) noise on top of the model's own initialisation, so norms and
    biases (initialised to constants) also differ between seeds, as they do between fine-tunes.
    """
    import torch
    import transformers

    config = tiny_config(family_or_model_type, layers=layers, vocab=vocab, tied=tied, **overrides)
    model_cls = getattr(transformers, family(family_or_model_type).architecture)
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    _cast(model, getattr(torch, dtype))
    path = Path(path)
    model.save_pretrained(path)
    return path


def _cast(model: Any, dtype: Any) -> None:
    """Cast floating parameters and buffers in place, leaving complex ones alone.

    ``Module.to(dtype)`` would also cast llama4's complex rotary buffer to real (with a warning);
    it is not saved, but the model should stay usable.
    """
    import itertools

    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)


def _shrunk_fields(config_cls: type, layers: int, vocab: int, requested: set[str]) -> dict[str, Any]:
    """The shrunk size fields and token ids of the class's defaults, sub-configs included.

    Only changed fields are returned: derived values (``layer_types``, ``moe_layers``,
    ``no_rope_layers``, deepseek's ``head_dim``...) must be derived again by the config from the
    new sizes, so neither they nor anything else that is not a declared field is passed. Optional
    sub-configs (None by default, like gemma4's vision and audio towers) only when ``requested``.
    """
    tokens = _TokenIds(vocab)
    defaults = config_cls()
    kwargs = _shrunk(defaults, _TEXT_SIZES, layers, vocab, tokens)
    for key in getattr(config_cls, "sub_configs_defaults", {}):
        if getattr(defaults, key, None) is None and key not in requested:
            continue
        sub_defaults, model_type = _sub_config_defaults(defaults, key)
        sizes = _TEXT_SIZES if key == "text_config" else _TOWER_SIZES
        kwargs[key] = _shrunk(sub_defaults, sizes, layers, vocab, tokens)
        if model_type is not None:  # resolved through AutoConfig: say which config the dict is for
            kwargs[key]["model_type"] = model_type
        if key != "text_config" and _has_field(type(sub_defaults), "out_hidden_size"):
            kwargs[key]["out_hidden_size"] = None  # the projector's output: the text width, set below
    text_hidden = kwargs.get("text_config", kwargs).get("hidden_size", _TEXT_SIZES["hidden_size"])
    for sub in kwargs.values():
        if isinstance(sub, dict) and "out_hidden_size" in sub:
            sub["out_hidden_size"] = text_hidden
    return kwargs


def _shrunk(defaults: PretrainedConfig, sizes: Mapping[str, _Size], layers: int, vocab: int,
            tokens: _TokenIds) -> dict[str, Any]:
    """The declared size fields of one config capped at their tiny values, and its moved token ids.

    A default that is already smaller, or None (not used), stays; layer and vocabulary counts are
    set exactly.
    """
    fields = getattr(type(defaults), "__dataclass_fields__", {})
    shrunk: dict[str, Any] = {}
    for key, size in sizes.items():
        value = _value(defaults, key)
        if key in fields and isinstance(value, int) and not isinstance(value, bool):
            shrunk[key] = size(layers, vocab) if callable(size) else min(value, size)
        elif key in fields and value is None and key in _WHEN_NONE:
            shrunk[key] = size
    if any(shrunk.get(key) for key in ("num_experts", "num_local_experts", "n_routed_experts")):
        if "num_experts_per_tok" in fields and _value(defaults, "num_experts_per_tok") is None:
            shrunk["num_experts_per_tok"] = _TEXT_SIZES["num_experts_per_tok"]
    shrunk.update(tokens.remapped({key: _value(defaults, key) for key in fields}))
    rope = _value(defaults, "rope_parameters")
    if isinstance(rope, dict) and "mrope_section" in getattr(defaults, "ignore_keys_at_rope_validation", ()):
        shrunk["rope_parameters"] = _tiny_mrope(rope, shrunk)
    return shrunk


def _value(config: PretrainedConfig, key: str) -> Any:
    """The config's value for ``key``, also for fields that vary per layer (gemma4's head_dim)."""
    try:
        return getattr(config, key, None)
    except RuntimeError:  # AmbiguousGlobalPerLayerAttributeError (not public): per-layer values differ
        return vars(config).get(key)


def _tiny_mrope(rope: Mapping[str, Any], shrunk: Mapping[str, Any]) -> dict[str, Any]:
    """Rope parameters with multimodal sections (time, height, width) that fit the tiny head.

    The sections split the rotary half of a head and must add up to it; the modeling code falls
    back to the full-size sections when the config has none, so a tiny config always needs them.
    """
    head_dim = shrunk.get("head_dim") or shrunk.get("hidden_size", 32) // shrunk.get("num_attention_heads", 4)
    half = int(head_dim * rope.get("partial_rotary_factor", 1.0)) // 2
    parts = len(rope.get("mrope_section") or (0, 0, 0))
    return {**rope, "mrope_section": [half // parts + (1 if i < half % parts else 0) for i in range(parts)]}


class _TokenIds:
    """Moves special token ids that fall outside the tiny vocabulary to its top ids.

    Out-of-range ids make transformers warn and would index past the embedding if a test fed an
    image; equal ids stay equal, and the low ids that tests feed stay plain text tokens.
    """

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.free = iter(range(vocab - 1, 0, -1))
        self.assigned: dict[int, int] = {}

    def remapped(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The token id fields of ``defaults`` that had to move, with their new values."""
        moved = {}
        for key, value in defaults.items():
            if key.endswith(("token_id", "token_index", "token_ids")) and (new := self._remap(value)) != value:
                moved[key] = new
        return moved

    def _remap(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._remap(item) for item in value]
        if isinstance(value, int) and not isinstance(value, bool) and value >= self.vocab:
            if value not in self.assigned:
                self.assigned[value] = next(self.free)
            return self.assigned[value]
        return value


def _merged(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``; sub-config dicts are merged key by key, not replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(merged.get(key), dict) and isinstance(value, Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _resolved(overrides: Mapping[str, Any], layers: int) -> dict[str, Any]:
    """``overrides`` with callables (per-layer lists) called with the number of layers."""
    return {key: _resolved(value, layers) if isinstance(value, Mapping) else value(layers) if callable(value) else value
            for key, value in overrides.items()}


def _sub_config_defaults(defaults: PretrainedConfig, key: str) -> tuple[PretrainedConfig, str | None]:
    """The default sub-config ``key`` and, if transformers resolves it through AutoConfig, its model_type.

    Optional sub-configs (None by default, like gemma4's vision tower) come from their class.
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    spec = type(defaults).sub_configs_defaults[key]
    config_cls = getattr(spec, "config_class", spec)
    model_type = getattr(spec, "model_type", None) if config_cls is AutoConfig else None
    current = getattr(defaults, key, None)
    if current is not None:
        return current, model_type and current.model_type
    if model_type is not None:
        config_cls = CONFIG_MAPPING[model_type]
    return config_cls(**getattr(spec, "init_kwargs", {})), model_type


def _has_field(config_cls: type | None, name: str) -> bool:
    """Whether a config class declares the field (transformers 5 configs are dataclasses)."""
    return config_cls is not None and name in getattr(config_cls, "__dataclass_fields__", {})
