"""Arcee Fusion: add to the base only the changes whose importance is an outlier.

    importance = |X − B| · KL(softmax(X) ‖ softmax(B))   (KL per row, along the last dim)
    threshold  = median + 1.5·(Q3 − Q1) of the importance (quantiles by index, no interpolation)
    Y = B + (X − B)·[importance ≥ threshold]

Tensors of at most a million elements are deterministic. Above that, the quantiles
come from a million importance values drawn with replacement (mergekit 0.1.5's rule),
using the per-tensor generator so that the same --seed gives the same bytes.
Computed in the inputs' dtype: mergekit matches exactly in float32, and the mask is
sensitive to precision.

:class:`FusionBlocks` merges a tensor given whole or in row blocks: one pass computes each
row's KL (kept, one value per row) and collects the sampled importances
(:class:`mergehub.maths.BlockQuantiles`); the merge pass reuses the stored KL. A 1-D
tensor is a single row, so its blocks are gathered and it is treated whole (it is small).
"""

from __future__ import annotations

import math

import torch
from mergehub import MergeInputs
from mergehub.maths import (
    BlockQuantiles,
    as_factor,
    merge_whole,
    softmax_kl,
    split_base,
)

QUANTILE_SAMPLE_SIZE = 1_000_000


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(FusionBlocks(inputs), inputs)


def importance_of(magnitude: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """|δ|·KL, written over ``magnitude`` = |δ| (owned by the caller) when the shapes allow: the same
    bytes as ``magnitude * kl`` without allocating (in-place kernels run about twice as fast)."""
    if magnitude.shape != torch.broadcast_shapes(magnitude.shape, kl.shape):  # a scalar against its 1-element KL
        return magnitude * kl
    return magnitude.mul_(kl)


class FusionBlocks:
    """One pass for the per-row KL and the quantile sample, then the merge pass."""

    passes = 1

    def __init__(self, meta: MergeInputs):
        shape = tuple(meta.full_shape or ())
        self.row_width = math.prod(shape[1:])
        device = meta.tensors[0].device if meta.tensors else torch.device("cpu")
        self.sample = BlockQuantiles(math.prod(shape), QUANTILE_SAMPLE_SIZE, meta.generator, device)
        self.vector = len(shape) < 2  # one row: its KL needs every block
        self.pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.kl: torch.Tensor | None = None  # per row (all dims but the last), in the working dtype
        self.threshold: torch.Tensor | None = None

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        base, (other,), _ = split_base(block)
        if self.vector:
            self.pieces.append((base.reshape(-1).clone(), other.reshape(-1).clone()))
            return
        kl = softmax_kl(other, base)
        if self.kl is None:
            rows = (block.full_shape or (0,))[0]
            self.kl = torch.empty((rows, *kl.shape[1:]), dtype=kl.dtype, device=kl.device)
        self.kl[block.offset:block.offset + kl.shape[0]] = kl
        self.add_importance(block.offset * self.row_width, base, other, kl)

    def add_importance(self, start: int, base: torch.Tensor, other: torch.Tensor, kl: torch.Tensor) -> None:
        """Hand the block's importance values to the quantile sample, computing only the sampled ones."""
        count = base.numel()
        where = self.sample.positions(start, count)
        if where is None:
            importance = importance_of((other - base).abs_(), kl)
        else:  # the same elementwise maths, at the sampled entries only; kl holds one value per row
            width = base.shape[-1] if base.dim() else 1
            importance = importance_of((other.reshape(-1)[where] - base.reshape(-1)[where]).abs_(), kl.reshape(-1)[where // width])
        self.sample.add(start, count, importance)

    def finish(self) -> None:
        if self.vector:  # the whole vector is here now: one KL, and every importance value
            base, other = (torch.cat(parts) for parts in zip(*self.pieces))
            self.pieces = []
            self.kl = softmax_kl(other, base)
            self.add_importance(0, base, other, self.kl)
        q1, median, q3 = self.sample.quantiles((0.25, 0.5, 0.75))
        self.threshold = median + 1.5 * (q3 - q1)

    def merge(self, block: MergeInputs) -> torch.Tensor:
        base, (other,), _ = split_base(block)
        if self.threshold is None:
            self.finish()
        kl = self.kl if self.vector else self.kl[block.offset:block.offset + base.shape[0]]  # type: ignore[index]
        delta = other - base
        keep = importance_of(delta.abs(), kl) >= self.threshold
        keep = keep.reshape(delta.shape)  # a scalar was read as one 1-element row
        return torch.addcmul(base, delta, as_factor(keep, delta.dtype))  # B + δ·keep in one kernel: δ·keep is exact
