"""sce in row blocks: the same bytes as whole, for 16- and 32-bit floats, two or three models, any select_topk."""

from __future__ import annotations

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import merge_in_blocks
from mergehub_method_sce.method import SceBlocks, merge, variance


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("models", [2, 3])
@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1, 0.0])
def test_blocks_give_the_bytes_of_the_whole_tensor(dtype, models, select_topk):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(80, 40, generator=g)
    tensors = [t.to(dtype) for t in [base] + [base + 0.1 * torch.randn(80, 40, generator=g) for _ in range(models)]]
    params = [{}] + [{"weight": 1.0}] * models
    shared = {"select_topk": select_topk, "int8_mask": False}
    whole = merge(MergeInputs("t", tensors, 0, params, shared))
    blocks = merge_in_blocks(SceBlocks, MergeInputs("t", tensors, 0, params, shared), [0, 3, 4, 79, 80])
    assert torch.equal(blocks, whole)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("models", [1, 2, 3])
def test_variance_rounds_as_torch_var(dtype, models):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(200, 300, generator=g) * 0.02
    deltas = [(base + 0.002 * torch.randn(200, 300, generator=g)).to(dtype) - base.to(dtype) for _ in range(models)]
    assert torch.equal(variance(deltas), torch.var(torch.stack(deltas), dim=0, unbiased=False))
