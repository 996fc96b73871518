"""The tensor layout most MoE formats share, for format plugins to build on (``mergehub.expert_layout``).

A dense decoder's layer ``i`` has one MLP, ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``. In
transformers' MoE models the same layer holds a router ``mlp.gate.weight`` (one row per expert) and the
experts fused into two tensors: ``mlp.experts.gate_up_proj`` (experts, 2 × intermediate, hidden; each
expert's gate rows, then its up rows) and ``mlp.experts.down_proj`` (experts, hidden, intermediate).
Everything outside the MLPs is the base model's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mergehub.plugin.specs import MoEPiece, MoETensor

_LAYER = re.compile(r"^model\.layers\.(\d+)\.mlp\.")


def expert_layout(names: Iterable[str], experts: int, shared_expert: bool = False) -> list[MoETensor]:
    """The MoE tensors for a dense checkpoint with tensor ``names``, in the checkpoint's order.

    Each layer's MLP tensors are replaced, where the first of them stood, by the router and the fused
    experts; with ``shared_expert`` also by ``mlp.shared_expert.*`` (shared expert 0's MLP, as is) and
    ``mlp.shared_expert_gate.weight`` (its router row), the layout of Qwen2-MoE.
    """
    out: list[MoETensor] = []
    done: set[int] = set()
    for name in names:
        match = _LAYER.match(name)
        if match is None:
            out.append(MoETensor(name, (MoEPiece("base", 0, name),)))
            continue
        layer = int(match.group(1))
        if layer not in done:
            done.add(layer)
            out += layer_experts(layer, experts, shared_expert)
    return out


def layer_experts(layer: int, experts: int, shared_expert: bool = False) -> list[MoETensor]:
    """Layer ``layer``'s router, fused experts (and shared expert)."""
    mlp = f"model.layers.{layer}.mlp"
    gate_up = tuple(MoEPiece("expert", e, f"{mlp}.{p}.weight") for e in range(experts) for p in ("gate_proj", "up_proj"))
    down = tuple(MoEPiece("expert", e, f"{mlp}.down_proj.weight", residual=True) for e in range(experts))
    tensors = [MoETensor(f"{mlp}.gate.weight", (MoEPiece("router", layer),)),
               MoETensor(f"{mlp}.experts.gate_up_proj", gate_up, per_expert=experts),
               MoETensor(f"{mlp}.experts.down_proj", down, per_expert=experts)]
    if shared_expert:
        tensors += [MoETensor(f"{mlp}.shared_expert.{p}.weight",
                              (MoEPiece("shared", 0, f"{mlp}.{p}.weight", residual=p == "down_proj"),))
                    for p in ("gate_proj", "up_proj", "down_proj")]
        tensors.append(MoETensor(f"{mlp}.shared_expert_gate.weight", (MoEPiece("shared_router", layer),)))
    return tensors
