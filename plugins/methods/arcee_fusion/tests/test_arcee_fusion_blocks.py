"""arcee_fusion in row blocks: the same bytes as whole (sampled or not), and as the quantiles of the same draw."""

from __future__ import annotations

import pytest
import torch
from mergehub import MergeInputs
from mergehub.maths import index_quantiles, softmax_kl
from mergehub.testing import merge_in_blocks
from mergehub_method_arcee_fusion.method import FusionBlocks, merge


def direct(base: torch.Tensor, other: torch.Tensor, seed: int) -> torch.Tensor:
    """The whole-tensor formula: quantiles of 10⁶ values drawn with replacement from the same generator."""
    delta = other - base
    importance = delta.abs() * softmax_kl(other, base)
    q1, median, q3 = index_quantiles(importance, (0.25, 0.5, 0.75), 1_000_000, torch.Generator().manual_seed(seed))
    return base + delta * (importance >= median + 1.5 * (q3 - q1)).to(delta.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1100, 1000), (60, 70), (3000,), (5, 6, 7)])
def test_blocks_give_the_bytes_of_the_whole_tensor(dtype, shape):
    g = torch.Generator().manual_seed(4)
    base = torch.randn(shape, generator=g)
    tensors = [base.to(dtype), (base + 0.3 * torch.randn(shape, generator=g)).to(dtype)]
    whole = merge(MergeInputs("t", tensors, 0, [{}, {}], {}, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(whole, direct(*tensors, seed=5))
    cuts = sorted({0, 1, shape[0] // 3, shape[0] - 1, shape[0]})
    inputs = MergeInputs("t", tensors, 0, [{}, {}], {}, generator=torch.Generator().manual_seed(5))
    assert torch.equal(merge_in_blocks(FusionBlocks, inputs, cuts), whole)
