"""mergehub plugin: the ``mixtral`` MoE output format."""

from __future__ import annotations

from mergehub import MoEFormatSpec, hookimpl


@hookimpl
def mergehub_register_moe_formats() -> list[MoEFormatSpec]:
    return [MoEFormatSpec("mixtral", "Mixtral (MixtralForCausalLM) from Llama or Mistral sources",
                          "mergehub_moe_mixtral.format:Mixtral")]
