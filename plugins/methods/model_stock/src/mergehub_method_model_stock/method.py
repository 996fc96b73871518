"""Model Stock (Jang et al. 2024): Y = t·mean(Xᵢ) + (1 − t)·B with t = N·cosθ / (1 + (N − 1)·cosθ).

cosθ is the mean cosine between every pair of task vectors Xᵢ − B, over the whole
tensor or, with ``filter_wise``, per row. Where 1 + (N − 1)·cosθ is within 1e-6 of
zero there is no finite ratio and the base is kept (t = 0), as mergekit 0.1.5 does.

Y = B + (t/N)·Σ(Xᵢ − B) is a combination of the task vectors whose coefficient follows from
their Gram matrix, so one pass sums the Gram matrix in float64 (none with ``filter_wise``:
a row is its own vector) and the output is formed block by block in float32. mergekit rounds
every step to the inputs' dtype; this is within one unit in the last place of the float64 result.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import GramBlocks, Select, merge_whole, non_base, norms


def stock_solve(n: int):
    """(R, n, n) Gram matrices of the task vectors -> (R, 1): t/N, the one coefficient of their sum."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def solve(gram: torch.Tensor) -> torch.Tensor:
        lengths = norms(gram)
        cosines = [(gram[:, i, j] / (lengths[:, i] * lengths[:, j]).clamp(min=1e-6)).clamp(-1, 1) for i, j in pairs]
        cos = torch.stack(cosines).mean(dim=0)
        denominator = 1 + (n - 1) * cos
        singular = denominator.abs() < 1e-6
        t = torch.where(singular, torch.zeros_like(cos), (n * cos) / torch.where(singular, 1, denominator))
        return (t / n).unsqueeze(-1)

    return solve


def blocks(meta: MergeInputs) -> GramBlocks | Select:
    """The block merger (x-mergehub ``blocks``)."""
    if meta.base is None:
        raise ValueError(f"{meta.name}: model_stock needs a base model")
    others = non_base(meta)
    if not others:
        return Select(meta.base)
    mode = "rows" if meta.shared["filter_wise"] else "flat"
    return GramBlocks(meta, others, meta.base, mode, stock_solve(len(others)), refine=True)


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_whole(blocks(inputs), inputs)
