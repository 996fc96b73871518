"""The arithmetic-only consensus kernels give the bytes of the obvious stack/compare/where formulation."""

from __future__ import annotations

import pytest
import torch

from mergehub.consensus import consensus_sum, plain_sum, subset_sums_to_zero, weighted


def obvious(deltas: list[torch.Tensor], weights: list[float], normalize: bool, consensus: bool) -> torch.Tensor:
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
    return mixed / divisor if normalize else mixed


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
@pytest.mark.parametrize("weights", [[0.5, 0.7, 0.3], [1.0, -1.0, 0.25], [0.3, 0.0, 1.1]])
def test_fast_kernels_match_the_obvious_formulation(dtype, count, normalize, weights):
    if count == 1 and dtype != torch.float32:
        count = 2
    deltas = deltas_with_edge_cases(4099, max(count, 2), dtype)[:count]
    w = weights[:count]
    for consensus, fast in ((True, consensus_sum), (False, plain_sum)):
        expected = obvious(deltas, w, normalize, consensus)
        got = fast(weighted([d.clone() for d in deltas], w), w, normalize)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)  # a float16 0/0 stays NaN


def test_subset_sums_to_zero():
    assert subset_sums_to_zero([1.0, -1.0], torch.float32)
    assert subset_sums_to_zero([0.5, 0.0], torch.float32)
    assert not subset_sums_to_zero([0.5, 0.7, 0.3], torch.bfloat16)
