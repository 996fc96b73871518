"""DELLA in blocks of whole rows: tensors larger than randstream.SMALL_TENSOR rank each row by magnitude and draw
from the addressable lane streams; any split into blocks, and any thread count, gives the same bytes as the whole."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.maths import (
    SMALL_TENSOR,
    della_blocks,
    della_linear_blocks,
    magnitude_order,
    merge_whole,
)
from mergehub.testing import merge_in_blocks, related_tensors

FACTORIES = {"della": della_blocks, "della_linear": della_linear_blocks}
SHARED = {"normalize": True, "rescale": True, "lambda": 1.0, "int8_mask": False}
PARAMS = [{}, {"weight": 0.6, "density": 0.5, "epsilon": 0.4}, {"weight": 0.5, "density": 0.7, "epsilon": 0.1},
          {"weight": 0.3, "density": 1.0, "epsilon": 0.15}]


def inputs(tensors, rows=None, seed=7, shape=None, **shared):
    start, stop = rows or (0, tensors[0].shape[0])
    return MergeInputs("t", [t[start:stop] for t in tensors], 0, PARAMS[: len(tensors)], {**SHARED, **shared},
                       generator=torch.Generator().manual_seed(seed), offset=start, full_shape=shape or tensors[0].shape)


def blocked(factory, tensors, rows_per_block, **shared):
    rows = tensors[0].shape[0]
    return merge_in_blocks(factory, inputs(tensors, **shared), [*range(0, rows, rows_per_block), rows])


@pytest.mark.parametrize("method", sorted(FACTORIES))
@pytest.mark.parametrize("dtype,shape", [(torch.bfloat16, (301, 257)), (torch.float16, (97, 5, 211)),
                                         (torch.float32, (70_001,)), (torch.float32, (130, 1031))])
@pytest.mark.parametrize("shared", [{}, {"normalize": False, "rescale": False, "lambda": 0.8}])
def test_any_blocks_give_the_bytes_of_the_whole_tensor(method, dtype, shape, shared):
    tensors = related_tensors(shape, dtype)
    assert math.prod(shape) > SMALL_TENSOR
    factory = FACTORIES[method]
    whole = merge_whole(factory(inputs(tensors, **shared)), inputs(tensors, **shared))
    assert whole.dtype == dtype and whole.shape == shape
    for rows in ((1, 7, shape[0] - 1) if len(shape) > 1 else (997, shape[0] - 1)):
        assert torch.equal(blocked(factory, tensors, rows, **shared), whole), rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_magnitude_order_is_a_stable_sort(dtype):
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 50, (40, 300), generator=g).to(dtype) * 0.25  # many equal magnitudes
    assert torch.equal(magnitude_order(rows), torch.sort(rows, dim=-1, stable=True).indices)


@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_large_tensors_keep_larger_entries_more_often_and_preserve_l1(method):
    tensors = related_tensors((400, 500), torch.float32, n=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merge_whole(FACTORIES[method](inputs(tensors)), inputs(tensors))
        torch.set_num_threads(2)
        two = merge_whole(FACTORIES[method](inputs(tensors)), inputs(tensors))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    merged, delta = (one - tensors[0]).double(), (tensors[1] - tensors[0]).double()  # normalize: w·d / w
    kept = merged != 0
    rank = delta.abs().argsort(dim=-1).argsort(dim=-1).double() / 499
    for low, high in ((0.0, 0.2), (0.4, 0.6), (0.8, 1.0001)):
        bucket = (rank >= low) & (rank < high)
        expected = (0.1 + 0.8 * rank[bucket]).mean().item()
        assert abs(kept[bucket].double().mean().item() - expected) < 5 * math.sqrt(0.25 / int(bucket.sum())), (low, high)
    torch.testing.assert_close(merged.abs().sum(), delta.abs().sum(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("shape", [(6, 9), (300, 400), (70_000,)])
def test_density_zero_keeps_nothing_of_that_model(shape):
    base, zero, other = related_tensors(shape, torch.float32, n=3)
    params = [{}, {"weight": 1.0, "density": 0.0, "epsilon": 0.1}, {"weight": 1.0, "density": 0.5, "epsilon": 0.1}]
    meta = MergeInputs("t", [base, zero, other], 0, params, SHARED, generator=torch.Generator().manual_seed(0),
                       full_shape=shape)
    delta = (merge_whole(della_blocks(meta), meta) - base).double()
    torch.testing.assert_close(delta.abs().sum(), (other - base).double().abs().sum(), rtol=1e-4, atol=0)
