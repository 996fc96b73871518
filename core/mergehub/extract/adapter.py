"""PEFT's side of an extracted adapter: tensor names and ``adapter_config.json``.

The names are those PEFT's ``save_pretrained`` writes and ``PeftModel.from_pretrained`` loads:
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` for linear layers,
``<module>.lora_embedding_A`` / ``lora_embedding_B`` (no ``.weight``) for embeddings, the whole tensor under its
own name for ``modules_to_save``, and a LoRA layer's trained bias as ``<module>.base_layer.bias`` (PEFT's
``bias: lora_only``). Every module has ``lora_alpha = r``, so PEFT's scale ``alpha / r`` is 1.
"""

from __future__ import annotations

from typing import Any

PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
BASENAME = "adapter_model"  # adapter_model.safetensors


def factor_names(module: str, embedding: bool) -> tuple[str, str]:
    if embedding:
        return f"{PREFIX}{module}.lora_embedding_A", f"{PREFIX}{module}.lora_embedding_B"
    return f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"


def whole_name(tensor: str) -> str:
    return PREFIX + tensor


def bias_name(module: str) -> str:
    return f"{PREFIX}{module}.base_layer.bias"


def adapter_config(base: str, revision: str | None, ranks: dict[str, int], modules_to_save: list[str],
                   biases: bool) -> dict[str, Any]:
    """The config PEFT reads: ``r`` is the largest rank, ``rank_pattern``/``alpha_pattern`` name every module
    (in full) whose rank is another; ``target_modules`` are the factorised modules' last name components."""
    top = max(ranks.values())
    other = {module: rank for module, rank in ranks.items() if rank != top}
    config: dict[str, Any] = {
        "base_model_name_or_path": base,
        "peft_type": "LORA",
        "use_rslora": False,
        "target_modules": sorted({module.rsplit(".", 1)[-1] for module in ranks}),
        "modules_to_save": modules_to_save,
        "task_type": "CAUSAL_LM",
        "r": top,
        "lora_alpha": top,
        "rank_pattern": other,
        "alpha_pattern": dict(other),
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "bias": "lora_only" if biases else "none",
        "inference_mode": True,
    }
    if revision:
        config["revision"] = revision
    return config
