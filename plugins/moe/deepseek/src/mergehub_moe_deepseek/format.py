"""DeepSeek-MoE: the dense MLPs of Llama or Mistral fine-tunes become the routed experts of DeepseekForCausalLM.

The layout and config are those mergekit-moe writes for ``architecture: deepseek`` (deepseek-moe-16b's):
every layer is sparse (``first_k_dense_replace: 0``, ``moe_layer_freq: 1``); each expert keeps its own
unfused tensors, ``mlp.experts.{e}.{gate,up,down}_proj.weight``, at the dense intermediate size; the router
``mlp.gate.weight`` has one row per routed expert, scored by softmax and renormalised over the chosen
experts (``norm_topk_prob``); an optional single shared expert, ``mlp.shared_experts.*``, sees every token
ungated. Attention, embeddings and norms are the base's.

transformers has no class for ``model_type: deepseek``: the output loads only with ``trust_remote_code=True``
and DeepSeek's own modeling code, which ``auto_map`` names. That code is Llama's attention as transformers
4.36 had it: it reads ``rope_theta`` and ``rope_scaling`` ``{"type", "factor"}`` (linear or dynamic only),
takes the head size as ``hidden_size / num_attention_heads``, has no sliding window and no MLP biases.
Sources it would compute differently are refused here, and the RoPE settings are written in the keys it
reads: a transformers 5 config keeps them in ``rope_parameters``, which that code never looks at, so
copying the base's keys as they are would silently give every model ``rope_theta`` 10000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mergehub import MoEPiece, MoETensor

SOURCES = ("llama", "mistral")
#: Where the modeling code lives: the checkpoint mergekit-moe's DeepSeek output points at.
REMOTE = "deepseek-ai/deepseek-moe-16b-base"
AUTO_MAP = {"AutoConfig": f"{REMOTE}--configuration_deepseek.DeepseekConfig",
            "AutoModel": f"{REMOTE}--modeling_deepseek.DeepseekModel",
            "AutoModelForCausalLM": f"{REMOTE}--modeling_deepseek.DeepseekForCausalLM"}
#: RoPE kinds DeepSeek's code implements (anything else raises when the model is built).
ROPE_KINDS = ("default", "linear", "dynamic")
#: Base keys not carried over: replaced below, or (``dtype``) left to the core's ``torch_dtype``, because
#: transformers 5 prefers ``dtype`` and would load a recipe's ``dtype: bfloat16`` output as the base's dtype.
_DROP = ("model_type", "architectures", "auto_map", "dtype", "torch_dtype", "rope_parameters", "rope_theta",
         "rope_scaling")
_MLP = re.compile(r"^(model\.layers\.(\d+)\.mlp)\.(.+)$")


@dataclass(frozen=True)
class Rope:
    """A config's rotary embedding, from either the transformers 4 or the transformers 5 keys."""

    theta: float
    kind: str
    factor: float | None

    @classmethod
    def of(cls, config: dict[str, Any]) -> Rope:
        params = config.get("rope_parameters")
        if isinstance(params, dict) and "rope_theta" in params:
            scaling = params
        else:
            scaling = config.get("rope_scaling") or {}
            params = {"rope_theta": config.get("rope_theta", 10000.0)}
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        return cls(float(params["rope_theta"]), str(kind), scaling.get("factor"))

    def scaling(self) -> dict[str, Any] | None:
        """``rope_scaling`` as DeepSeek's code reads it (it indexes ``type`` and ``factor``)."""
        return None if self.kind == "default" else {"type": self.kind, "factor": self.factor}


class DeepseekMoe:
    def rejects(self, base: dict[str, Any], experts: list[dict[str, Any]], shared: list[dict[str, Any]]) -> str | None:
        configs = [base, *experts, *shared]
        types = sorted({str(c.get("model_type")) for c in configs})
        if len(shared) > 1:
            return f"DeepSeek-MoE takes at most one shared expert (got {len(shared)})"
        if len(types) != 1 or types[0] not in SOURCES:
            return f"needs Llama or Mistral sources, all of one family (got {', '.join(types)})"
        return _attention_problem(base) or next((p for p in map(_source_problem, configs) if p), None)

    def config(self, base: dict[str, Any], experts: int, experts_per_token: int, shared: int) -> dict[str, Any]:
        rope = Rope.of(base)
        config = {k: v for k, v in base.items() if k not in _DROP}
        config.update(architectures=["DeepseekForCausalLM"], model_type="deepseek", auto_map=AUTO_MAP,
                      n_routed_experts=experts, n_shared_experts=shared or None, num_experts_per_tok=experts_per_token,
                      first_k_dense_replace=0, moe_layer_freq=1, scoring_func="softmax", norm_topk_prob=True,
                      moe_intermediate_size=base["intermediate_size"], rope_theta=rope.theta,
                      rope_scaling=rope.scaling())
        return config

    def tensors(self, base: dict[str, Any], names: list[str], experts: int, shared: int) -> list[MoETensor]:
        return deepseek_layout(names, experts, shared)


def _attention_problem(base: dict[str, Any]) -> str | None:
    """Why DeepSeek's attention would compute something else than the base's, if it would."""
    hidden, heads = int(base["hidden_size"]), int(base["num_attention_heads"])
    head_dim = base.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != hidden:
        return (f"DeepSeek's attention takes the head size as hidden_size / num_attention_heads = {hidden // heads}, "
                f"but these sources use head_dim {head_dim}")
    window, positions = base.get("sliding_window"), base.get("max_position_embeddings")
    if window is not None and (positions is None or int(window) < int(positions)):
        return f"DeepSeek's attention has no sliding window, and these sources attend to the last {window} tokens only"
    rope = Rope.of(base)
    if rope.kind not in ROPE_KINDS:
        return f"DeepSeek's code knows only linear and dynamic RoPE scaling, and these sources use '{rope.kind}'"
    return None


def _source_problem(config: dict[str, Any]) -> str | None:
    if config.get("mlp_bias"):
        return "DeepSeek's MLPs have no biases, which these sources use"
    return None


def deepseek_layout(names: list[str], experts: int, shared: int) -> list[MoETensor]:
    """The output tensors, in the base's order; each layer's MLP tensors are replaced, where the first of them
    stood, by the router, each expert's copy of them and the shared expert's (unfused: one tensor each)."""
    suffixes: dict[str, list[str]] = {}
    for name in names:
        match = _MLP.match(name)
        if match:
            suffixes.setdefault(match.group(1), []).append(match.group(3))
    out: list[MoETensor] = []
    for name in names:
        match = _MLP.match(name)
        if match is None:
            out.append(MoETensor(name, (MoEPiece("base", 0, name),)))
        elif match.group(1) in suffixes:
            out += _layer(match.group(1), int(match.group(2)), suffixes.pop(match.group(1)), experts, shared)
    return out


def _layer(mlp: str, layer: int, suffixes: list[str], experts: int, shared: int) -> list[MoETensor]:
    def copy(source: str, index: int, target: str) -> list[MoETensor]:
        return [MoETensor(f"{target}.{s}", (MoEPiece(source, index, f"{mlp}.{s}", residual=s.startswith("down_proj")),))
                for s in suffixes]

    tensors = [MoETensor(f"{mlp}.gate.weight", (MoEPiece("router", layer),))]
    for e in range(experts):
        tensors += copy("expert", e, f"{mlp}.experts.{e}")
    if shared:
        tensors += copy("shared", 0, f"{mlp}.shared_experts")
    return tensors
