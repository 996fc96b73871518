"""taskarith.combine (no stacks, no masks) gives the bytes of the obvious stack/compare/where formulation."""

from __future__ import annotations

import pytest
import torch
from mergehub.maths.taskarith import combine


def obvious(base: torch.Tensor, deltas: list[torch.Tensor], weights: list[float], normalize: bool, consensus: bool,
            lam: float) -> torch.Tensor:
    """Reference §3.6 written directly: stacked deltas, sign comparison, where-selection."""
    stacked = torch.stack(deltas)
    w = torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    stacked = stacked * w
    if consensus:
        elected = torch.where(stacked.sum(dim=0) >= 0, 1, -1).to(stacked.dtype)
        mask = stacked.sign() == elected
        mixed = (stacked * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    mixed = mixed / divisor if normalize else mixed
    return base + (mixed * lam if lam != 1 else mixed)


def deltas_with_edge_cases(n: int, count: int, dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(count * 10 + n)
    deltas = [(torch.randn(n, generator=generator) * 1e-3).to(dtype) for _ in range(count)]
    for d in deltas:
        d[torch.rand(n, generator=generator) < 0.3] = 0  # sparsified entries
    deltas[1][:50] = -deltas[0][:50]  # sums that are exactly zero: + is elected
    deltas[1][50:60] = 0
    deltas[0][50:60] = -0.0  # negative zeros never agree
    return deltas


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lam", [1.0, 0.7])
@pytest.mark.parametrize("weights", [[0.5, 0.7, 0.3], [1.0, -1.0, 0.25], [0.3, 0.0, 1.1]])
def test_combine_matches_the_obvious_formulation(dtype, count, normalize, lam, weights):
    deltas = deltas_with_edge_cases(4099, max(count, 2), dtype)[:count]
    base = (torch.randn(4099, generator=torch.Generator().manual_seed(7)) * 0.02).to(dtype)
    w = weights[:count]
    params = [{"weight": x} for x in w]
    for consensus in ("sum", None):
        expected = obvious(base, deltas, w, normalize, consensus is not None, lam)
        got = combine(base, [d.clone() for d in deltas], params, {"normalize": normalize, "lambda": lam}, consensus)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)  # a float16 0/0 stays NaN
