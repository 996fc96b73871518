"""DARE in blocks: tensors larger than randstream.SMALL_TENSOR draw from the addressable lane streams; any
split into blocks, and any thread count, gives the same bytes as the whole tensor, through the CLI too."""

from __future__ import annotations

import math

import pytest
import torch

from mergehub import MergeInputs
from mergehub.dropout import dare_linear_blocks, dare_ties_blocks
from mergehub.randstream import SMALL_TENSOR
from mergehub.taskarith import merge_whole
from mergehub.testing import load_state, run_cli

FACTORIES = {"dare_ties": dare_ties_blocks, "dare_linear": dare_linear_blocks}
SHARED = {"normalize": False, "rescale": True, "lambda": 1.0, "int8_mask": False}


def inputs(tensors, rows=None, seed=7, shape=None, **shared):
    params = [{}, {"weight": 0.6, "density": 0.4}, {"weight": 0.5, "density": 0.7}, {"weight": 0.3, "density": 1.0}]
    start, stop = rows or (0, tensors[0].shape[0])
    return MergeInputs("t", [t[start:stop] for t in tensors], 0, params[: len(tensors)], {**SHARED, **shared},
                       generator=torch.Generator().manual_seed(seed), offset=start, full_shape=shape or tensors[0].shape)


def blocked(factory, tensors, rows_per_block, **shared):
    """What the executor does: every block through ``collect`` for each pass, then through ``merge``."""
    shape = tuple(tensors[0].shape)
    ranges = [(s, min(shape[0], s + rows_per_block)) for s in range(0, shape[0], rows_per_block)]
    meta = inputs([torch.empty(0, dtype=tensors[0].dtype)] * len(tensors), shape=shape, **shared)
    merger = factory(meta)
    for pass_index in range(merger.passes):
        for rows in ranges:
            merger.collect(pass_index, inputs(tensors, rows, **shared))
    return torch.cat([merger.merge(inputs(tensors, rows, **shared)) for rows in ranges])


def models(shape, dtype, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base.to(dtype)] + [(base + 0.1 * torch.randn(shape, generator=g)).to(dtype) for _ in range(n - 1)]


@pytest.mark.parametrize("method", sorted(FACTORIES))
@pytest.mark.parametrize("dtype,shape", [(torch.bfloat16, (301, 257)), (torch.float16, (97, 5, 211)),
                                         (torch.float32, (100_003,))])
@pytest.mark.parametrize("shared", [{}, {"normalize": True, "rescale": False, "lambda": 0.8}])
def test_any_blocks_give_the_bytes_of_the_whole_tensor(method, dtype, shape, shared):
    tensors = models(shape, dtype)
    assert math.prod(shape) > SMALL_TENSOR
    factory = FACTORIES[method]
    whole = merge_whole(factory(inputs(tensors, **shared)), inputs(tensors, **shared))
    assert whole.dtype == dtype and whole.shape == shape
    for rows in ((1, 7, 64, shape[0] - 1) if len(shape) > 1 else (997, 4099, shape[0] - 1)):
        assert torch.equal(blocked(factory, tensors, rows, **shared), whole), rows


@pytest.mark.parametrize("method", sorted(FACTORIES))
def test_large_tensors_keep_about_density_preserve_l1_and_ignore_the_thread_count(method):
    tensors = models((700, 512), torch.float32, n=2)
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


def test_blocked_equals_whole_and_one_thread_equals_two_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=1, seed=s, hidden=256, vocab=512) for n, s in (("big-a", 1), ("big-b", 2), ("big-c", 3)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: dare_ties\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.6, density: 0.5}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.5, density: 0.3}}}}\ndtype: bfloat16\n")
    runs = {"whole": ("1GB", "2"), "blocked": ("16K", "2"), "one-thread": ("16K", "1")}
    for out, (memory, threads) in runs.items():
        result = run_cli("merge", recipe, "--out", tmp_path / out, "--seed", "3", "--max-memory", memory,
                         env={"OMP_NUM_THREADS": threads})
        assert result.returncode == 0, result.output
    whole = load_state(tmp_path / "whole")
    assert max(t.numel() for t in whole.values()) > SMALL_TENSOR
    for out in ("blocked", "one-thread"):
        other = load_state(tmp_path / out)
        assert all(torch.equal(whole[n], other[n]) for n in whole), out
