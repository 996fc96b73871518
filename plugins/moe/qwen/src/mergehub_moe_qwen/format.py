"""Qwen MoE formats: Qwen3 fine-tunes become Qwen3-MoE; Qwen2 fine-tunes (plus one shared expert) Qwen2-MoE.

Every layer is sparse (``decoder_sparse_step: 1``, no MLP-only layers); the experts keep the dense
intermediate size; the chosen experts' weights are renormalised (``norm_topk_prob``), as mergekit-moe
configures them. Qwen2-MoE's shared expert is one dense model's MLP, gated per token by its own router row.
"""

from __future__ import annotations

from typing import Any

from mergehub import MoETensor, expert_layout

_DROP = ("model_type", "architectures", "auto_map")


def _family(configs: list[dict[str, Any]], wanted: str) -> str | None:
    types = sorted({str(c.get("model_type")) for c in configs})
    if types != [wanted]:
        return f"needs {wanted} sources only (got {', '.join(types)})"
    return None


def _common(config: Any, base: dict[str, Any], experts: int, experts_per_token: int) -> dict[str, Any]:
    config.num_experts = experts
    config.num_experts_per_tok = experts_per_token
    config.decoder_sparse_step = 1
    config.mlp_only_layers = []
    config.norm_topk_prob = True
    config.moe_intermediate_size = base["intermediate_size"]
    return config.to_diff_dict()  # as save_pretrained writes it (mergekit-moe writes the same)


class Qwen3Moe:
    def rejects(self, base: dict[str, Any], experts: list[dict[str, Any]], shared: list[dict[str, Any]]) -> str | None:
        if shared:
            return "Qwen3-MoE has no shared experts"
        return _family([base, *experts], "qwen3")

    def config(self, base: dict[str, Any], experts: int, experts_per_token: int, shared: int) -> dict[str, Any]:
        from transformers import Qwen3MoeConfig

        config = Qwen3MoeConfig(**{k: v for k, v in base.items() if k not in _DROP})
        config.architectures = ["Qwen3MoeForCausalLM"]
        return _common(config, base, experts, experts_per_token)

    def tensors(self, base: dict[str, Any], names: list[str], experts: int, shared: int) -> list[MoETensor]:
        return expert_layout(names, experts)


class Qwen2Moe:
    def rejects(self, base: dict[str, Any], experts: list[dict[str, Any]], shared: list[dict[str, Any]]) -> str | None:
        if len(shared) != 1:
            return f"Qwen2-MoE needs exactly one shared expert (got {len(shared)})"
        return _family([base, *experts, *shared], "qwen2")

    def config(self, base: dict[str, Any], experts: int, experts_per_token: int, shared: int) -> dict[str, Any]:
        from transformers import Qwen2MoeConfig

        config = Qwen2MoeConfig(**{k: v for k, v in base.items() if k not in _DROP})
        config.architectures = ["Qwen2MoeForCausalLM"]
        config.shared_expert_intermediate_size = base["intermediate_size"]
        config.use_sliding_window = False
        config.sliding_window = None
        return _common(config, base, experts, experts_per_token)

    def tensors(self, base: dict[str, Any], names: list[str], experts: int, shared: int) -> list[MoETensor]:
        return expert_layout(names, experts, shared_expert=True)
