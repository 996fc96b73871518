"""Model Stock (Jang et al. 2024): Y = t·mean(Xᵢ) + (1 − t)·B with t = N·cosθ / (1 + (N − 1)·cosθ).

cosθ is the mean cosine between every pair of task vectors Xᵢ − B, over the whole
tensor or, with ``filter_wise``, per row. Where 1 + (N − 1)·cosθ is within 1e-6 of
zero there is no finite ratio and the base is kept (t = 0), as mergekit 0.1.5 does.
Computed in the inputs' dtype, like mergekit: one pass sums the norms and the dot products
of the rounded elementwise products (none with ``filter_wise``: a row is its own vector),
then the output is formed block by block with the reference's elementwise operations.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import ExactBlocks, Select, Term, merge_whole, non_base, rounded


class ModelStockBlocks(ExactBlocks):
    """Pass 0: ‖oᵢ‖² and Σ oᵢ⊙oⱼ (i < j) per vector; then t, and Y = t·(ΣXᵢ/N) + (1 − t)·B."""

    def __init__(self, meta: MergeInputs):
        self.others, self.base = non_base(meta), meta.base
        super().__init__(meta, "rows" if meta.shared["filter_wise"] else "flat")
        n = len(self.others)
        self.pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    def prepare(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        base = chunks[self.base]  # type: ignore[index]
        return [chunks[i] for i in self.others] + [base]

    def terms(self, pass_index: int, vectors: list[torch.Tensor]) -> list[Term]:
        base = vectors[-1]
        offsets = [x - base for x in vectors[:-1]]
        return [(o, True) for o in offsets] + [(offsets[i] * offsets[j], False) for i, j in self.pairs]

    def finish(self, pass_index: int, sums: torch.Tensor) -> None:
        n = len(self.others)
        norms = rounded(sums[:, :n], self.dtype, sqrt=True)
        dots = rounded(sums[:, n:], self.dtype)
        cosines = [(dots[:, p] / (norms[:, i] * norms[:, j]).clamp(min=1e-6)).clamp(-1, 1)
                   for p, (i, j) in enumerate(self.pairs)]
        cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
        denominator = 1 + (n - 1) * cos
        singular = denominator.abs() < 1e-6
        safe = torch.where(singular, torch.ones_like(denominator), denominator)
        self.t = torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)

    def output(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        base, t = vectors[-1], self.t
        average = sum(vectors[:-1]).div_(len(self.others))  # type: ignore[union-attr]
        return average.mul_(t).add_((1 - t) * base)


def blocks(meta: MergeInputs) -> ModelStockBlocks | Select:
    """The block merger (x-mergehub ``blocks``)."""
    if meta.base is None:
        raise ValueError(f"{meta.name}: model_stock needs a base model")
    if not non_base(meta):
        return Select(meta.base)
    return ModelStockBlocks(meta)


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_whole(blocks(inputs), inputs)
