"""Mixtral: the dense MLPs of Llama or Mistral fine-tunes become the routed experts of MixtralForCausalLM.

Attention, embeddings and norms are the base's; Mixtral has no shared experts, no attention or MLP
biases and always renormalises the chosen experts' weights.
"""

from __future__ import annotations

from typing import Any

from mergehub import MoETensor, expert_layout

SOURCES = ("llama", "mistral")


class Mixtral:
    def rejects(self, base: dict[str, Any], experts: list[dict[str, Any]], shared: list[dict[str, Any]]) -> str | None:
        types = sorted({str(c.get("model_type")) for c in [base, *experts]})
        if shared:
            return "Mixtral has no shared experts"
        if len(types) != 1 or types[0] not in SOURCES:
            return f"needs Llama or Mistral sources, all of one family (got {', '.join(types)})"
        if base.get("attention_bias") or base.get("mlp_bias"):
            return "Mixtral has no attention or MLP biases, which these sources use"
        return None

    def config(self, base: dict[str, Any], experts: int, experts_per_token: int, shared: int) -> dict[str, Any]:
        from transformers import MixtralConfig

        settings = {k: v for k, v in base.items() if k not in ("model_type", "architectures", "auto_map")}
        config = MixtralConfig(**settings)
        config.architectures = ["MixtralForCausalLM"]
        config.num_local_experts = experts
        config.num_experts_per_tok = experts_per_token
        config.sliding_window = base.get("sliding_window")  # Llama has none; a Mistral's window is kept
        return config.to_diff_dict()  # as save_pretrained writes it (mergekit-moe writes the same)

    def tensors(self, base: dict[str, Any], names: list[str], experts: int, shared: int) -> list[MoETensor]:
        return expert_layout(names, experts)
