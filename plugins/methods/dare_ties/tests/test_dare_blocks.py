"""DARE in blocks: tensors larger than randstream.SMALL_TENSOR draw from the addressable lane streams; any
split into blocks, and any thread count, gives the same bytes as the whole tensor, through the CLI too."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.maths import (
    SMALL_TENSOR,
    dare_linear_blocks,
    dare_ties_blocks,
    merge_whole,
)
from mergehub.testing import merge_in_blocks, related_tensors

FACTORIES = {"dare_ties": dare_ties_blocks, "dare_linear": dare_linear_blocks}
SHARED = {"normalize": False, "rescale": True, "lambda": 1.0, "int8_mask": False}


def inputs(tensors, rows=None, seed=7, shape=None, **shared):
    params = [{}, {"weight": 0.6, "density": 0.4}, {"weight": 0.5, "density": 0.7}, {"weight": 0.3, "density": 1.0}]
    start, stop = rows or (0, tensors[0].shape[0])
    return MergeInputs("t", [t[start:stop] for t in tensors], 0, params[: len(tensors)], {**SHARED, **shared},
                       generator=torch.Generator().manual_seed(seed), offset=start, full_shape=shape or tensors[0].shape)


def blocked(factory, tensors, rows_per_block, **shared):
    rows = tensors[0].shape[0]
    return merge_in_blocks(factory, inputs(tensors, **shared), [*range(0, rows, rows_per_block), rows])


@pytest.mark.parametrize("method", sorted(FACTORIES))
@pytest.mark.parametrize("dtype,shape", [(torch.bfloat16, (301, 257)), (torch.float16, (97, 5, 211)),
                                         (torch.float32, (100_003,))])
@pytest.mark.parametrize("shared", [{}, {"normalize": True, "rescale": False, "lambda": 0.8}])
def test_any_blocks_give_the_bytes_of_the_whole_tensor(method, dtype, shape, shared):
    tensors = related_tensors(shape, dtype)
    assert math.prod(shape) > SMALL_TENSOR
    factory = FACTORIES[method]
    whole = merge_whole(factory(inputs(tensors, **shared)), inputs(tensors, **shared))
    assert whole.dtype == dtype and whole.shape == shape
    for rows in ((1, 7, 64, shape[0] - 1) if len(shape) > 1 else (997, 4099, shape[0] - 1)):
        assert torch.equal(blocked(factory, tensors, rows, **shared), whole), rows


@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_large_tensors_keep_about_density_preserve_l1_and_ignore_the_thread_count(method):
    tensors = related_tensors((700, 512), torch.float32, n=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merge_whole(FACTORIES[method](inputs(tensors)), inputs(tensors))
        torch.set_num_threads(2)
        two = merge_whole(FACTORIES[method](inputs(tensors)), inputs(tensors))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    merged, delta = (one - tensors[0]).double() / 0.6, (tensors[1] - tensors[0]).double()
    n = delta.numel()
    assert abs(torch.count_nonzero(merged).item() / n - 0.4) < 5 * math.sqrt(0.24 / n)
    torch.testing.assert_close(merged.abs().sum(), delta.abs().sum(), rtol=1e-4, atol=0)
    assert not torch.equal(one, merge_whole(FACTORIES[method](inputs(tensors, seed=8)), inputs(tensors, seed=8)))
