"""Generalised task arithmetic: the one algorithm behind TIES, DARE, breadcrumbs and DELLA.

    δᵢ = Xᵢ − B;  dᵢ = sparsify(δᵢ) (rescaled to δᵢ's L1 norm when ``rescale``);  Dᵢ = wᵢ·dᵢ
    sign consensus: keep Dᵢ only where its sign agrees with sign(Σⱼ Dⱼ) (0 counts as +)
    Y = B + λ · Σ kept Dᵢ  (divided by the summed weight of the kept models when ``normalize``)

Everything runs in the inputs' dtype, as mergekit does (no upcast), and the weights are
cast to that dtype too, so bfloat16 recipes give mergekit's bfloat16 numbers. The random
sparsifiers (DARE, DELLA) are block mergers in :mod:`mergehub.maths.dropout` that end in :func:`combine`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from mergehub.maths.topk import TopK, as_factor
from mergehub.plugin.specs import MergeInputs

Consensus = Literal["sum", "count"] | None


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


def merge_task_vectors(inputs: MergeInputs, consensus: Consensus = None) -> torch.Tensor:
    """Task arithmetic without sparsification (elementwise, so any block of rows merges alone)."""
    base, others, params = split_base(inputs)
    if not others:
        return base
    deltas = [tensor - base for tensor in others]
    weights = task_weights(params, deltas[0])
    return combine_weighted(base, [d.mul_(w) for d, w in zip(deltas, weights)], weights, inputs.shared, consensus)


def combine(base: torch.Tensor, kept: list[torch.Tensor], params: list[dict], shared: dict,
            consensus: Consensus) -> torch.Tensor:
    """Weight the (sparsified) task vectors, vote on signs, normalise and add to the base.

    ``kept`` is left as it is; the weighted copies are worked on in place (:func:`combine_weighted`).
    """
    weights = task_weights(params, kept[0])
    return combine_weighted(base, [k * w for k, w in zip(kept, weights)], weights, shared, consensus)


def task_weights(params: list[dict], like: torch.Tensor) -> list[torch.Tensor]:
    """Each model's weight as a 0-d tensor of ``like``'s dtype (mergekit casts the weights to the inputs' dtype)."""
    return [torch.tensor(p["weight"], dtype=like.dtype, device=like.device) for p in params]


def combine_weighted(base: torch.Tensor, deltas: list[torch.Tensor], weights: list[torch.Tensor], shared: dict,
                     consensus: Consensus) -> torch.Tensor:
    """:func:`combine` after the weighting: ``deltas`` are Dᵢ = wᵢ·dᵢ, owned by the caller and overwritten.

    Rounds where ``torch.stack(kept) * w`` then ``.sum(0)`` would (sums accumulate in float32 for
    16-bit dtypes and round once), but never stacks: with σ = ±1 the elected sign, the agreeing
    entries of Dᵢ are σ·max(σ·Dᵢ, 0), a few cheap kernels per model instead of masks and copies.
    Every kernel after the weighting writes into a tensor it owns: an in-place kernel runs about
    twice as fast as one that allocates its result (fresh pages, cold cache), with the same bytes.
    """
    normalize = shared.get("normalize", False)
    scaled = shared.get("lambda", 1.0) != 1
    divisor: torch.Tensor | None = None
    if consensus == "count":
        stacked = torch.stack(deltas)
        mask = sign_agreement(stacked, "count", shared.get("int8_mask", False))
        mixed = (stacked * mask).sum(dim=0)
        divisor = (torch.stack(weights).view(-1, *([1] * base.dim())) * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    elif consensus:
        sigma, agreeing = elect(deltas, in_place=True)
        if normalize:  # Σ wᵢ over the agreeing models (sign(|Dᵢ|) is 1 there, 0 elsewhere); 0 becomes 1
            divisor = stacked_sum([a.sign().mul_(w) for a, w in zip(agreeing, weights)], in_place=True)
            divisor.add_(torch.eq(divisor, 0, out=torch.empty_like(divisor)))
        mixed = stacked_sum(agreeing, in_place=True)
        if not normalize and not scaled:  # B + σ·Σ in one kernel, rounded once as B + (σ·Σ) is
            return _into(torch.addcmul, mixed, base, mixed, sigma).to(base.dtype)
        mixed.mul_(sigma)
    else:
        mixed = stacked_sum(deltas, in_place=True)
        divisor = stacked_sum([w.clone() for w in weights])
        if divisor.abs() < 1e-8:
            divisor.fill_(1)
    if normalize:
        mixed = mixed / divisor
    if scaled:
        mixed = mixed * shared["lambda"]
    return _into(torch.add, mixed, base, mixed).to(base.dtype)


def _into(kernel, owned: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """``kernel(*args)`` written over ``owned`` when it has the result's dtype and shape (no allocation), else new.

    The kernels are elementwise, so writing over an input is safe; the dtype check keeps the
    rounding of type promotion (a float32 sum over a float16 base stays float32 until the end).
    """
    if owned.dtype == torch.result_type(*args[:2]) and owned.shape == torch.broadcast_shapes(*(a.shape for a in args)):
        return kernel(*args, out=owned)
    return kernel(*args)


def elect(deltas: list[torch.Tensor], in_place: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """σ = ±1, the sign of Σᵢ Dᵢ (a zero sum elects +), and each |Dᵢ| where Dᵢ has that sign, else 0.

    The agreeing part of Dᵢ is then σ·max(σ·Dᵢ, 0): sign consensus without masks or comparisons.
    ``in_place`` overwrites ``deltas`` with those parts (and σ is written over the sum), for callers
    that own them: same bytes, no allocations.
    """
    dtype = deltas[0].dtype
    total = stacked_sum(deltas).add_(0.0)  # -0 + 0 = +0
    sigma = torch.copysign(torch.ones((), dtype=dtype, device=deltas[0].device), total, out=total)
    if in_place:
        return sigma, [d.mul_(sigma).clamp_min_(0) for d in deltas]
    return sigma, [(d * sigma).clamp_min_(0) for d in deltas]


def stacked_sum(terms: list[torch.Tensor], in_place: bool = False) -> torch.Tensor:
    """Σ terms, rounded as ``torch.stack(terms).sum(0)`` is: 16-bit floats accumulate in float32.

    Returns a new tensor (callers modify it in place), or with ``in_place`` possibly ``terms[0]``
    itself, overwritten (for callers that own the terms).
    """
    if len(terms) == 1:
        return terms[0] if in_place else terms[0].clone()
    if len(terms) == 2 or terms[0].element_size() >= 4:  # one rounding of the exact pair sum, as in float32
        total = terms[0].add_(terms[1]) if in_place else terms[0] + terms[1]
        for term in terms[2:]:
            total += term
        return total
    total = terms[0].float()
    for term in terms[1:]:
        total += term
    return total.to(terms[0].dtype)


class MagnitudeBlocks:
    """TIES-style trimming in blocks: the k largest |δᵢ| of each whole task vector, found exactly.

    Passes: 0 and 1 find each model's cut-off (histograms, see :mod:`mergehub.maths.topk`) and
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
        """δᵢ (owned by the caller, overwritten) with the entries outside the top k set to 0, as δᵢ·0."""
        if self.densities[i] <= 0:
            return torch.zeros_like(delta)
        selector = self.selectors[i]
        return delta if selector is None else delta.mul_(as_factor(selector.mask(delta), delta.dtype))

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
        deltas: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        for i, tensor in enumerate(others):
            sparse = self.sparse(i, tensor - base)
            if self.rescale and self.selectors[i] is not None and min(self.l1_delta[i], self.l1_kept[i]) >= 1e-7:
                sparse.mul_(torch.tensor(self.l1_delta[i] / self.l1_kept[i], dtype=sparse.dtype))
            weights.append(task_weights([params[i]], sparse)[0])
            deltas.append(sparse.mul_(weights[-1]))  # each step rounds as combine's out-of-place kernels would
        return combine_weighted(base, deltas, weights, self.shared, self.consensus)


def ties_blocks(meta: MergeInputs) -> MagnitudeBlocks:
    """The block merger of ``ties`` (x-mergehub ``blocks``)."""
    return MagnitudeBlocks(meta, "sum")
