"""Sums over a whole tensor seen in blocks that do not depend on where the blocks start and end.

Each row's partial sum is computed in float64 from that row alone and stored at the row's
index; the total is reduced once, with ``math.fsum`` (exactly rounded, so independent of the
order and of the thread count). Memory is one float64 per row (per 1-D element) and statistic.
"""

from __future__ import annotations

import math

import torch


def row_count(full_shape: tuple[int, ...] | None) -> int:
    """Rows the executor splits a tensor into: dim 0 (the elements of a 1-D tensor), 1 for a scalar."""
    return full_shape[0] if full_shape else 1


class RowSums:
    """``count`` statistics, each a sum over every row of a tensor whose blocks arrive with their row offset."""

    def __init__(self, full_shape: tuple[int, ...] | None, count: int = 1):
        self.sums = torch.zeros(count, row_count(full_shape), dtype=torch.float64)

    def put(self, index: int, offset: int, values: torch.Tensor) -> None:
        """Record the per-row sums of ``values``, a block whose first row is ``offset`` (repeating one is harmless)."""
        rows = values.reshape(values.shape[0] if values.dim() else 1, -1)
        self.sums[index, offset:offset + rows.shape[0]] = rows.double().sum(dim=-1)  # faster than sum(dtype=...)

    def total(self, index: int) -> float:
        return math.fsum(self.sums[index].tolist())
