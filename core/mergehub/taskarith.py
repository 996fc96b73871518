"""Generalised task arithmetic: the one algorithm behind TIES, DARE, breadcrumbs and DELLA.

    δᵢ = Xᵢ − B;  dᵢ = sparsify(δᵢ) (rescaled to δᵢ's L1 norm when ``rescale``);  Dᵢ = wᵢ·dᵢ
    sign consensus: keep Dᵢ only where its sign agrees with sign(Σⱼ Dⱼ) (0 counts as +)
    Y = B + λ · Σ kept Dᵢ  (divided by the summed weight of the kept models when ``normalize``)

Everything runs in the inputs' dtype, as mergekit does (no upcast), and the weights are
cast to that dtype too, so bfloat16 recipes give mergekit's bfloat16 numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

from mergehub import sparsify
from mergehub.topk import TopK
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
    return combine(base, kept, params, shared, consensus)


def combine(base: torch.Tensor, kept: list[torch.Tensor], params: list[dict], shared: dict,
            consensus: Consensus) -> torch.Tensor:
    """Weight the (sparsified) task vectors, vote on signs, normalise and add to the base."""
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


class MagnitudeBlocks:
    """TIES-style trimming in blocks: the k largest |δᵢ| of each whole task vector, found exactly.

    Passes: 0 and 1 find each model's cut-off (histograms, see :mod:`mergehub.topk`) and
    sum ‖δᵢ‖₁; pass 2, only with ``rescale``, sums the kept entries' L1 norm. Among equal
    magnitudes at the cut-off the lowest flat indices are kept, whatever the blocks.
    """

    def __init__(self, meta: MergeInputs, consensus: Consensus):
        self.consensus = consensus
        self.shared = meta.shared
        self.rescale = bool(meta.shared.get("rescale", False))
        self.select_passes = TopK.passes_for(meta.tensors[0].dtype) if meta.tensors else 2
        self.passes = self.select_passes + (1 if self.rescale else 0)
        count = math.prod(meta.full_shape or ())
        params = [p for i, p in enumerate(meta.params) if i != meta.base]
        self.selectors = [TopK(max(1, math.floor(p["density"] * count))) if 0 < p["density"] < 1 else None
                          for p in params]
        self.densities = [p["density"] for p in params]
        self.l1_delta = [0.0] * len(params)
        self.l1_kept = [0.0] * len(params)

    def sparse(self, i: int, delta: torch.Tensor) -> torch.Tensor:
        if self.densities[i] <= 0:
            return torch.zeros_like(delta)
        selector = self.selectors[i]
        return delta if selector is None else delta * selector.mask(delta)

    def restart(self, block: MergeInputs) -> None:
        if block.offset == 0:  # a new pass over the tensor starts: ties are counted from the start again
            for selector in self.selectors:
                if selector is not None:
                    selector.ties_seen = 0

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        base, others, _ = split_base(block)
        rescale_pass = pass_index == self.select_passes
        if rescale_pass:
            self.restart(block)
        for i, tensor in enumerate(others):
            delta = tensor - base
            selector = self.selectors[i]
            if pass_index == 0 and self.rescale:
                self.l1_delta[i] += float(delta.abs().sum(dtype=torch.float64))
            if not rescale_pass and selector is not None:
                selector.collect(pass_index, delta)
            if rescale_pass:
                self.l1_kept[i] += float(self.sparse(i, delta).abs().sum(dtype=torch.float64))

    def merge(self, block: MergeInputs) -> torch.Tensor:
        base, others, params = split_base(block)
        if not others:
            return base
        self.restart(block)
        kept = []
        for i, tensor in enumerate(others):
            sparse = self.sparse(i, tensor - base)
            if self.rescale and self.selectors[i] is not None and min(self.l1_delta[i], self.l1_kept[i]) >= 1e-7:
                sparse = sparse * torch.tensor(self.l1_delta[i] / self.l1_kept[i], dtype=sparse.dtype)
            kept.append(sparse)
        return combine(base, kept, params, self.shared, self.consensus)


def ties_blocks(meta: MergeInputs) -> MagnitudeBlocks:
    """The block merger of ``ties`` (x-mergehub ``blocks``)."""
    return MagnitudeBlocks(meta, "sum")


def merge_whole(merger: object, inputs: MergeInputs) -> torch.Tensor:
    """Run a block merger over a tensor given whole (one block)."""
    for pass_index in range(merger.passes):  # type: ignore[attr-defined]
        merger.collect(pass_index, inputs)  # type: ignore[attr-defined]
    return merger.merge(inputs)  # type: ignore[attr-defined]
