"""mergehub plugin: the ``qwen3_moe`` and ``qwen2_moe`` MoE output formats."""

from __future__ import annotations

from mergehub import MoEFormatSpec, hookimpl


@hookimpl
def mergehub_register_moe_formats() -> list[MoEFormatSpec]:
    return [
        MoEFormatSpec("qwen3_moe", "Qwen3-MoE (Qwen3MoeForCausalLM) from Qwen3 sources, no shared experts",
                      "mergehub_moe_qwen.format:Qwen3Moe"),
        MoEFormatSpec("qwen2_moe", "Qwen2-MoE (Qwen2MoeForCausalLM) from Qwen2 sources, with one shared expert",
                      "mergehub_moe_qwen.format:Qwen2Moe"),
    ]
