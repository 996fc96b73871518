"""Breadcrumbs in row blocks: drop each task vector's largest outliers and smallest entries, exactly.

mergekit sorts ``|δ|`` ascending and keeps positions ``[n_bot, n_bot + target)``; here the same
ranks are read off magnitude histograms (:class:`mergehub.maths.topk.RankWindow`) over the whole
tensor, one pass for 16-bit floats and two for 32-bit, and applied block by block, so no sort
and no whole-tensor mask is ever held. Among equal magnitudes at a cut-off the lowest flat
indices rank first (mergekit's unstable sort leaves that choice open).

With ``rescale``, ‖δᵢ‖₁ and the kept part's L1 norm come straight from the histograms for
16-bit floats; for 32-bit floats they are summed per row in float64 (one more pass), then
reduced once (:class:`mergehub.maths.rowsums.RowSums`).
"""

from __future__ import annotations

import math

import torch

from mergehub.maths.rowsums import RowSums
from mergehub.maths.taskarith import (
    Consensus,
    combine_weighted,
    split_base,
    task_weights,
)
from mergehub.maths.topk import SHORT, RankWindow, as_factor, passes_for
from mergehub.plugin.specs import MergeInputs


def window(n: int, density: float, gamma: float) -> RankWindow | None:
    """The kept ranks (by descending magnitude) of ``n`` entries, or None when density ≥ 1 keeps all.

    target = ⌊density·n⌋ entries are kept after dropping the ⌊gamma·n⌋ largest (fewer when they
    do not fit) and the smallest ``n − target − n_top``.
    """
    if density >= 1:
        return None
    target = max(0, math.floor(density * n))
    n_top = math.floor(gamma * n)
    n_bottom = max(0, n - target - n_top)
    return RankWindow(n - n_bottom - target, n - n_bottom)


class OutlierBlocks:
    """The block merger of ``breadcrumbs`` (no consensus) and ``breadcrumbs_ties`` (sum consensus)."""

    def __init__(self, meta: MergeInputs, consensus: Consensus):
        self.consensus = consensus
        self.shared = meta.shared
        dtype = meta.tensors[0].dtype if meta.tensors else torch.float32
        count = math.prod(meta.full_shape or ())
        params = [p for i, p in enumerate(meta.params) if i != meta.base]
        self.windows = [window(count, p["density"], p["gamma"]) for p in params]
        trimmed = any(w is not None for w in self.windows)
        self.rescale = bool(meta.shared.get("rescale", False)) and trimmed
        self.select_passes = passes_for(dtype) if trimmed else 0
        summed = self.rescale and dtype not in SHORT  # 16-bit floats: the L1 norms come from the histograms
        self.passes = self.select_passes + (1 if summed else 0)
        # ‖δᵢ‖₁ and ‖dᵢ‖₁ of every row, for 32-bit floats
        self.rows = RowSums(meta.full_shape, 2 * len(params)) if summed else None
        self.scales: list[float | None] | None = None

    def sparse(self, i: int, delta: torch.Tensor, offset: int) -> torch.Tensor:
        """δᵢ (owned by the caller, overwritten) with the entries outside its rank window set to 0, as δᵢ·0.

        Blocks come in row order; offset 0 starts a pass.
        """
        selector = self.windows[i]
        if selector is None:
            return delta
        if offset == 0:
            selector.rewind()
        return delta.mul_(as_factor(selector.mask(delta), delta.dtype))

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        base, others, _ = split_base(block)
        for i, tensor in enumerate(others):
            selector = self.windows[i]
            if selector is None:
                continue
            delta = tensor - base
            if pass_index < self.select_passes:
                selector.collect(pass_index, delta)
                if pass_index == 0 and self.rows is not None:
                    self.rows.put(2 * i, block.offset, delta.abs())
            elif self.rows is not None:  # the rescale pass (32-bit floats)
                self.rows.put(2 * i + 1, block.offset, self.sparse(i, delta, block.offset).abs())

    def merge(self, block: MergeInputs) -> torch.Tensor:
        base, others, params = split_base(block)
        if not others:
            return base
        if self.scales is None:
            self.scales = [self.scale(i) for i in range(len(others))]
        deltas: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        for i, tensor in enumerate(others):
            sparse = self.sparse(i, tensor - base, block.offset)
            scale = self.scales[i]
            if scale is not None:
                sparse.mul_(torch.tensor(scale, dtype=sparse.dtype))
            weights.append(task_weights([params[i]], sparse)[0])
            deltas.append(sparse.mul_(weights[-1]))  # each step rounds as combine's out-of-place kernels would
        return combine_weighted(base, deltas, weights, self.shared, self.consensus)

    def scale(self, i: int) -> float | None:
        """‖δᵢ‖₁ / ‖dᵢ‖₁ when rescaling (None: no rescale, or either norm below 1e-7)."""
        selector = self.windows[i]
        if not self.rescale or selector is None:
            return None
        if self.rows is not None:
            total, kept = self.rows.total(2 * i), self.rows.total(2 * i + 1)
        else:
            total, kept = selector.magnitude_sums()  # type: ignore[misc]
        return None if min(total, kept) < 1e-7 else total / kept


def breadcrumbs_blocks(meta: MergeInputs) -> OutlierBlocks:
    """The block merger of ``breadcrumbs`` (x-mergehub ``blocks``)."""
    return OutlierBlocks(meta, None)


def breadcrumbs_ties_blocks(meta: MergeInputs) -> OutlierBlocks:
    """The block merger of ``breadcrumbs_ties`` (x-mergehub ``blocks``)."""
    return OutlierBlocks(meta, "sum")
