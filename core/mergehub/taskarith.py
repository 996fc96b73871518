"""Generalised task arithmetic: the one algorithm behind TIES, DARE, breadcrumbs and DELLA.

    δᵢ = Xᵢ − B;  dᵢ = sparsify(δᵢ) (rescaled to δᵢ's L1 norm when ``rescale``);  Dᵢ = wᵢ·dᵢ
    sign consensus: keep Dᵢ only where its sign agrees with sign(Σⱼ Dⱼ) (0 counts as +)
    Y = B + λ · Σ kept Dᵢ  (divided by the summed weight of the kept models when ``normalize``)

Everything runs in the inputs' dtype, as mergekit does (no upcast), and the weights are
cast to that dtype too, so bfloat16 recipes give mergekit's bfloat16 numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from mergehub import sparsify
from mergehub.specs import MergeInputs

Sparsifier = Callable[[torch.Tensor, dict, torch.Generator | None], torch.Tensor]
Consensus = Literal["sum", "count"] | None

#: The sparsifiers by name, each taking (delta, per-model params, generator).
SPARSIFIERS: dict[str, Sparsifier] = {
    "magnitude": lambda d, p, g: sparsify.magnitude(d, p["density"]),
    "random": lambda d, p, g: sparsify.random(d, p["density"], g),
    "magnitude_outliers": lambda d, p, g: sparsify.magnitude_outliers(d, p["density"], p["gamma"]),
    "della_magprune": lambda d, p, g: sparsify.della_magprune(d, p["density"], p["epsilon"], g),
}


def split_base(inputs: MergeInputs) -> tuple[torch.Tensor, list[torch.Tensor], list[dict]]:
    """The base tensor, then the other tensors and their parameters, in recipe order."""
    if inputs.base is None:
        raise ValueError(f"{inputs.name}: this method needs a base model")
    others = [i for i in range(len(inputs.tensors)) if i != inputs.base]
    return inputs.tensors[inputs.base], [inputs.tensors[i] for i in others], [inputs.params[i] for i in others]


def sign_agreement(deltas: torch.Tensor, mode: Literal["sum", "count"] = "sum", int8_mask: bool = False) -> torch.Tensor:
    """Mask of the entries of ``deltas`` (stacked on dim 0) whose sign matches the elected sign.

    ``sum`` elects the sign of the summed values, ``count`` the sign most entries have;
    a tie or zero elects +. Zero entries never agree.
    """
    mask_dtype = torch.int8 if int8_mask else deltas.dtype
    signs = deltas.sign().to(mask_dtype)
    total = deltas.sum(dim=0) if mode == "sum" else signs.sum(dim=0)
    elected = torch.where(total >= 0, 1, -1).to(mask_dtype)
    return signs == elected


def merge_task_vectors(inputs: MergeInputs, sparsifier: str | None, consensus: Consensus) -> torch.Tensor:
    base, others, params = split_base(inputs)
    if not others:
        return base
    shared = inputs.shared
    kept = []
    for tensor, p in zip(others, params):
        delta = tensor - base
        sparse = SPARSIFIERS[sparsifier](delta, p, inputs.generator) if sparsifier else delta
        if sparsifier and shared.get("rescale", False):  # in the sparsifier's dtype (float32 for DARE on float16)
            sparse = sparsify.rescale_l1(delta.to(sparse.dtype), sparse)
        kept.append(sparse.to(delta.dtype))
    deltas = torch.stack(kept)
    weights = torch.tensor([p["weight"] for p in params], dtype=deltas.dtype, device=deltas.device)
    weights = weights.view(-1, *([1] * (deltas.dim() - 1)))
    deltas = deltas * weights
    if consensus:
        mask = sign_agreement(deltas, consensus, shared.get("int8_mask", False))
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if shared.get("normalize", False):
        mixed = mixed / divisor
    if shared.get("lambda", 1.0) != 1:
        mixed = mixed * shared["lambda"]
    return (base + mixed).to(base.dtype)
