"""mergehub plugin: the ``deepseek`` MoE output format (DeepSeek-MoE, as mergekit-moe's ``architecture: deepseek``)."""

from __future__ import annotations

from mergehub import MoEFormatSpec, hookimpl


# Without ``architecture:`` the first format that accepts the sources wins, and Llama or Mistral sources
# suit both Mixtral and DeepSeek. mergekit-moe tries Mixtral first; to give the same answer whatever order
# the entry points are found in, this format must come after the others. The registry indexes formats in
# pluggy's hook-implementation order, where ``tryfirst`` implementations are listed last (pluggy calls the
# list from its end), so ``tryfirst`` here means "considered last".
@hookimpl(tryfirst=True)
def mergehub_register_moe_formats() -> list[MoEFormatSpec]:
    return [
        MoEFormatSpec("deepseek", "DeepSeek-MoE (DeepseekForCausalLM, DeepSeek's remote code) from Llama or Mistral "
                      "sources, at most one shared expert", "mergehub_moe_deepseek.format:DeepseekMoe"),
    ]
