"""SCE: select the entries where the task vectors vary most, calculate each model's weight from
its task vector's energy, erase the entries whose sign disagrees, and average the rest.

    Tᵢ = Xᵢ − B;  when select_topk < 1, keep in every Tᵢ only the ⌊select_topk·#(v ≠ 0)⌋ entries
    of largest population variance v across the models
    cᵢ = mean(Tᵢ²) / Σⱼ mean(Tⱼ²)   (1/N when the sum is below 1e-6)
    mᵢ = sign agreement of Tᵢ with sign(Σⱼ Tⱼ)
    Y  = B + Σ cᵢ·mᵢ·Tᵢ / max(Σ cᵢ·mᵢ, 1e-6)

Computed in the inputs' dtype, as mergekit does. :class:`SceBlocks` merges a tensor given whole
or in row blocks: the variance's top-k is found exactly over the whole tensor from bit-pattern
histograms (:class:`mergehub.maths.TopK`: one pass for 16-bit floats, two for 32-bit), then one
pass sums each model's Tᵢ² per row in float64, then the blocks are merged. ``int8_mask`` only
chose mergekit's mask dtype; no mask is held here, and the result is the same.
"""

from __future__ import annotations

import math

import torch
from mergehub import MergeInputs
from mergehub.maths import (
    SHORT,
    PackedMasks,
    RowSums,
    TopK,
    as_factor,
    each,
    elect,
    merge_whole,
    spans,
    split_base,
    stacked_sum,
)


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(SceBlocks(inputs), inputs)


def variance(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Population variance across the models, entry by entry, rounded to the deltas' dtype.

    Written out because ``torch.var`` over a stacked dim is ~20× slower. ``torch.var``
    accumulates in float64; float32 work for 16-bit inputs (float64 otherwise) rounds to the
    same values. Two models, the usual case, have the closed form ((a − b)/2)².
    """
    dtype = deltas[0].dtype
    work = torch.float32 if dtype in SHORT else torch.float64
    if len(deltas) == 2:
        difference = deltas[0].to(work)
        return difference.sub_(deltas[1].to(work)).square_().mul_(0.25).to(dtype)  # mixed dtypes run slower
    values = [d.to(work) for d in deltas]
    mean = stacked_sum(values).div_(len(values))
    spread = torch.zeros_like(mean)
    for value in values:
        spread.add_((value - mean).square_())
    return spread.div_(len(values)).to(dtype)


#: A tensor whose selection, one bit per element, fits in this many bytes keeps it between the energy
#: and merge passes (a 128k × 2048 embedding needs 33 MB; a Llama MLP matrix 2 MB).
MASK_CACHE_BYTES = 40 * 1024**2


class SceBlocks:
    """SCE over a tensor seen in row blocks: select passes (when select_topk < 1), an energy pass, then merge."""

    def __init__(self, meta: MergeInputs):
        self.fraction = float(meta.shared["select_topk"])
        self.count = math.prod(meta.full_shape or ())
        models = len(meta.tensors) - (meta.base is not None)
        dtype = meta.tensors[0].dtype if meta.tensors else torch.float32
        self.selector = TopK(0) if self.fraction < 1 else None
        self.select_passes = TopK.passes_for(dtype) if self.selector is not None and self.fraction > 0 else 0
        self.passes = self.select_passes + 1 if models else 0
        self.nonzero = 0  # entries of non-zero variance (counted per block for 32-bit values)
        self.k: int | None = None if self.select_passes else 0
        self.energy = RowSums(meta.full_shape, max(1, models))
        self.coefficients: torch.Tensor | None = None
        self.kept = PackedMasks(self.count, MASK_CACHE_BYTES)  # the energy pass's selection, for the merge pass

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        base, others, _ = split_base(block)
        deltas = [t - base for t in others]
        if pass_index < self.select_passes:
            spread = variance(deltas)
            if pass_index == 0 and spread.dtype not in SHORT:
                self.nonzero += int(torch.count_nonzero(spread))
            if pass_index > 0:
                self.settle(spread.dtype)
            self.selector.collect(pass_index, spread)  # type: ignore[union-attr]
            return
        for i, delta in enumerate(self.selected(block, deltas)):
            self.energy.put(i, block.offset, delta.square_())

    def settle(self, dtype: torch.dtype) -> None:
        """Once the variance is counted: k = ⌊select_topk·#(v ≠ 0)⌋, the product in float32 as in mergekit."""
        if self.k is None and self.selector is not None:
            nonzero = self.count - int(self.selector.high[0]) if dtype in SHORT else self.nonzero  # bin 0 holds ±0
            self.k = self.selector.k = int(torch.tensor(nonzero) * self.fraction)

    def selected(self, block: MergeInputs, deltas: list[torch.Tensor]) -> list[torch.Tensor]:
        """The task vectors with every entry outside the variance's top k set to 0 (as x·0, like mergekit's mask).

        ``deltas`` are owned by the caller and overwritten (in-place kernels run about twice as fast).
        """
        keep = self.keep_mask(block, deltas, remember=True)  # the energy pass: kept for the merge pass
        if keep is None:
            return deltas
        factor = as_factor(keep, deltas[0].dtype)
        return [d.mul_(factor) for d in deltas]

    def keep_mask(self, block: MergeInputs, deltas: list[torch.Tensor] | None, remember: bool = False
                  ) -> torch.Tensor | None:
        """The block's selection (bool or 0/1 uint8, shaped like its tensors); None when nothing is dropped.

        With ``remember`` it is kept (packed) for the merge pass, which then skips the variance and the
        selection's kernels, about a third of its work. ``deltas`` are needed only when it must be computed.
        """
        if self.selector is None:
            return None
        like = block.tensors[0]
        self.settle(like.dtype)
        if not self.k:
            return torch.zeros(like.shape, dtype=torch.bool, device=like.device)
        key = (block.offset, tuple(like.shape))
        keep = None if remember else self.kept.take(key, like)
        if keep is None:
            if deltas is None:
                base, others, _ = split_base(block)
                deltas = [t - base for t in others]
            if block.offset == 0:  # a new pass over the tensor: equal variances are counted from the start again
                self.selector.ties_seen = 0
            keep = self.selector.mask(variance(deltas))
            if remember:
                self.kept.put(key, keep)
        return keep

    def merge(self, block: MergeInputs) -> torch.Tensor:
        base, others, _ = split_base(block)
        if not others:
            return base
        if self.coefficients is None:
            self.coefficients = self.weights(len(others), base.dtype)
        keep = self.keep_mask(block, None)
        flat = [t.reshape(-1) for t in (base, *others)]
        keep = keep.reshape(-1) if keep is not None else None
        out = torch.empty_like(base)
        result = out.view(-1)

        def piece(span: tuple[int, int]) -> None:
            a, b = span
            self.combine(flat[0][a:b], [t[a:b] for t in flat[1:]], keep[a:b] if keep is not None else None, result[a:b])

        each(piece, spans(base.numel()))
        return out

    def combine(self, base: torch.Tensor, others: list[torch.Tensor], keep: torch.Tensor | None,
                out: torch.Tensor) -> None:
        """B + σ·Σcᵢ·agreeingᵢ / Σcᵢ·agreesᵢ into ``out``: elementwise, so any split into pieces gives the same bytes."""
        deltas = [t - base for t in others]
        if keep is not None:
            factor = as_factor(keep, base.dtype)
            deltas = [d.mul_(factor) for d in deltas]
        # The agreeing part of Tᵢ is σ·max(σ·Tᵢ, 0): the roundings of mergekit's masks (cᵢ·Tᵢ, then sums
        # over the models) in a few kernels.
        sigma, agreeing = elect(deltas, in_place=True)
        weights = self.coefficients.unbind()  # type: ignore[union-attr]
        # cᵢ where Tᵢ agrees: a 0/1 factor of the dtype times cᵢ (a bool·bfloat16 product runs four times slower)
        agrees = [as_factor(a > 0, a.dtype).mul_(c) for a, c in zip(agreeing, weights)]
        mixed = stacked_sum([a.mul_(c) for a, c in zip(agreeing, weights)], in_place=True)
        divisor = stacked_sum(agrees, in_place=True).clamp_(min=1e-6)
        torch.addcmul(base, mixed.div_(divisor), sigma, out=out)  # B + σ·(Σ/divisor), rounded once as B + x is

    def weights(self, models: int, dtype: torch.dtype) -> torch.Tensor:
        """cᵢ = mean(Tᵢ²)/Σⱼ mean(Tⱼ²), each mean summed per row in float64 and rounded to the dtype."""
        energy = torch.tensor([self.energy.total(i) / max(1, self.count) for i in range(models)], dtype=dtype)
        total = energy.sum().item()
        return energy / total if abs(total) >= 1e-6 else torch.ones_like(energy) / models
