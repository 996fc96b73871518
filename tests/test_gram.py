"""The block mergers of slerp, nuslerp, multislerp, karcher and model_stock give the same bytes whatever the
blocks and the thread count, for 1-D and 2-D tensors of bfloat16, float32 and float64.

nuslerp, multislerp and model_stock are computed in float32 from float64 statistics where the reference
(mergekit 0.1.5) rounds every step to the inputs' 16-bit dtype. The formulas are written out below as
mergekit computes them; run on float64 inputs they are the exact result, run on the 16-bit inputs they are
an independent replay of mergekit's arithmetic. mergehub's result must be within one unit in the last place
of the exact one everywhere, and no further from it than the replay, element for element at worst and on
average."""

from __future__ import annotations

import random

import pytest
import torch
from mergehub import MergeInputs
from mergehub.maths import workers
from mergehub.maths.blocks import merge_whole
from mergehub.maths.gram import Fold, row_gram
from mergehub.maths.spherical import (
    karcher_blocks,
    multislerp_blocks,
    nuslerp_blocks,
    slerp_blocks,
)
from mergehub.testing import merge_in_blocks
from mergehub_method_model_stock.method import blocks as model_stock_blocks

NUSLERP = {"nuslerp_flatten": True, "nuslerp_row_wise": False}
#: name -> (factory, base index, per-input params, shared params), for three inputs
CASES = {
    "slerp": (slerp_blocks, 0, [{}, {}], {"t": 0.3}),
    "nuslerp": (nuslerp_blocks, 2, [{"weight": 0.3}, {"weight": 0.6}, {}], NUSLERP),
    "nuslerp-rows": (nuslerp_blocks, None, [{"weight": 1.0}, {"weight": 1.0}], NUSLERP | {"nuslerp_flatten": False}),
    "nuslerp-columns": (nuslerp_blocks, 0, [{}, {"weight": 0.7}, {"weight": 0.2}],
                        {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    "multislerp": (multislerp_blocks, 0, [{}, {"weight": 0.5}, {"weight": 0.3}],
                   {"normalize_weights": True, "eps": 1e-8}),
    "multislerp-nobase": (multislerp_blocks, None, [{"weight": 0.2}, {"weight": 0.5}, {"weight": 0.3}],
                          {"normalize_weights": False, "eps": 1e-8}),
    "karcher": (karcher_blocks, None, [{}, {}, {}], {"max_iter": 10, "tol": 1e-5}),
    "model_stock": (model_stock_blocks, 0, [{}, {}, {}], {"filter_wise": False}),
    "model_stock-filter_wise": (model_stock_blocks, 0, [{}, {}, {}], {"filter_wise": True}),
}


def inputs(case: str, tensors: list[torch.Tensor], offset: int = 0,
           shape: tuple[int, ...] | None = None) -> MergeInputs:
    _, base, params, shared = CASES[case]
    return MergeInputs("model.layers.0.mlp.up_proj.weight", tensors, base, params, shared, offset=offset,
                       full_shape=shape)


def blocked(case: str, tensors: list[torch.Tensor], cuts: list[int]) -> torch.Tensor:
    """What the executor does: the factory, its passes over the blocks, then the output blocks."""
    shape = tuple(tensors[0].shape)
    return merge_in_blocks(CASES[case][0], inputs(case, tensors, 0, shape), [0, *cuts, shape[0]])


def sample(case: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    count = len(CASES[case][2])
    common = torch.randn(shape, generator=generator)
    return [(common + 0.3 * torch.randn(shape, generator=generator)).to(dtype) for _ in range(count)]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("shape", [(37, 45), (300,)], ids=["2d", "1d"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_blocks_give_the_same_bytes_as_the_whole_tensor(case: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    tensors = sample(case, shape, dtype, seed=len(case))
    factory = CASES[case][0]
    whole = merge_whole(factory(inputs(case, tensors)), inputs(case, tensors))
    assert whole.dtype == dtype and whole.shape == tensors[0].shape
    rng = random.Random(case)
    for cuts in ([1], list(range(1, shape[0])), sorted(rng.sample(range(1, shape[0]), 5))):
        assert torch.equal(blocked(case, tensors, cuts), whole), cuts


@pytest.mark.parametrize("case", ["slerp", "model_stock", "nuslerp-columns"])
def test_the_thread_count_does_not_change_the_bytes(case: str) -> None:
    tensors = sample(case, (96, 4096), torch.bfloat16, seed=5)  # chunks of many rows, and rows > 1 chunk split
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            results.append(blocked(case, tensors, [1, 2, 50, 95]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("case", ["model_stock", "nuslerp-rows", "karcher", "multislerp"])
def test_the_worker_count_does_not_change_the_bytes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks spread over 1, 2 or 3 runs (more runs than the pool has workers too) give the same bytes."""
    tensors = sample(case, (200, 1500), torch.bfloat16, seed=3)  # 87 rows a chunk: several chunks per block
    results = []
    for count in (1, 2, 3):
        monkeypatch.setattr(workers, "THREADS", count)
        results.append(blocked(case, tensors, [5, 120, 121]))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_a_rows_gram_matrix_does_not_depend_on_the_other_rows() -> None:
    stacked = torch.randn(65, 3, 1000)
    whole = row_gram(stacked)
    for start, stop in ((0, 1), (3, 4), (5, 40), (64, 65)):
        assert torch.equal(row_gram(stacked[start:stop].clone()), whole[start:stop])


def test_the_fold_sums_in_row_order() -> None:
    values = torch.randn(1000, 2, dtype=torch.float64) * torch.logspace(-8, 8, 1000, dtype=torch.float64)[:, None]
    one, many = Fold(), Fold()
    one.add(values)
    for start in range(0, 1000, 7):
        many.add(values[start:start + 7])
    expected = [0.0, 0.0]
    for row in values.tolist():
        expected = [e + v for e, v in zip(expected, row)]
    assert one.total.tolist() == expected and torch.equal(one.total, many.total)


# --- the reference's arithmetic, in the inputs' dtype

def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "flat":
        return nuslerp(t, v0.reshape(1, -1), v1.reshape(1, -1), "rows").reshape(v0.shape)
    if mode == "columns":
        return nuslerp(t, v0.T, v1.T, "rows").T
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= 1e-16
    theta = torch.acos(torch.where(colinear, 0, cos))
    arc = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * v0 + t * v1, arc)


def multislerp(xs: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    flat = torch.stack(xs).reshape(len(xs), -1)
    w = torch.tensor(weights, dtype=flat.dtype).view(-1, 1)
    w = w / w.sum() if normalize else w
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + 1e-8)
    mean = (units * w).sum(0)
    mean = mean / torch.norm(mean)
    tangent = ((units - (units * mean).sum(-1, keepdim=True) * mean) * w).sum(0)
    r = torch.norm(tangent) + 1e-8
    result = (mean * torch.cos(r) + tangent * (torch.sin(r) / r)) * (norms.squeeze(-1) * w.squeeze(-1)).sum()
    return result.reshape(xs[0].shape)


def model_stock(base: torch.Tensor, xs: list[torch.Tensor], per_row: bool) -> torch.Tensor:
    b = base if per_row else base.reshape(-1)
    xs = [x if per_row else x.reshape(-1) for x in xs]
    o0, o1 = (x - b for x in xs)
    cos = ((o0 * o1).sum(-1) / (torch.norm(o0, dim=-1) * torch.norm(o1, dim=-1)).clamp(min=1e-6)).clamp(-1, 1)
    t = (2 * cos / (1 + cos)).unsqueeze(-1)  # N = 2, far from the singularity here
    return (t * (sum(xs) / 2) + (1 - t) * b).reshape(base.shape)


def reference(case: str, x: list[torch.Tensor]) -> torch.Tensor:
    if case == "nuslerp":  # base 2, weights 0.3 / 0.6
        return x[2] + nuslerp(0.6 / 0.9, x[0] - x[2], x[1] - x[2], "flat")
    if case == "nuslerp-rows":
        return nuslerp(0.5, x[0], x[1], "rows" if x[0].dim() == 2 else "flat")
    if case == "nuslerp-columns":  # base 0, weights 0.7 / 0.2
        return x[0] + nuslerp(0.2 / 0.9, x[1] - x[0], x[2] - x[0], "columns" if x[0].dim() == 2 else "flat")
    if case == "multislerp":
        return multislerp([x[1] - x[0], x[2] - x[0]], [0.5, 0.3], True) + x[0]
    if case == "multislerp-nobase":
        return multislerp(x, [0.2, 0.5, 0.3], False)
    return model_stock(x[0], x[1:], case.endswith("filter_wise") and x[0].dim() == 2)


REFERENCE_CASES = ["nuslerp", "nuslerp-rows", "nuslerp-columns", "multislerp", "multislerp-nobase",
         "model_stock", "model_stock-filter_wise"]


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s numbers at each of ``values`` (float64), subnormals counting as the smallest normal."""
    info = torch.finfo(dtype)
    magnitude = values.abs().clamp(min=info.tiny)
    return info.eps * torch.exp2(torch.floor(torch.log2(magnitude)))


@pytest.mark.parametrize("case", REFERENCE_CASES)
@pytest.mark.parametrize("shape", [(37, 45), (300,)], ids=["2d", "1d"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_within_one_ulp_of_the_exact_result_and_closer_than_the_replay(
        case: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    for seed in range(3):
        tensors = sample(case, shape, dtype, seed=seed)
        exact = reference(case, [t.double() for t in tensors])
        replay = reference(case, tensors)
        assert replay.dtype == dtype and exact.dtype == torch.float64
        replay_error = (replay.double() - exact).abs()
        for cuts in ([], [1, 7, 20] if shape[0] > 20 else [1]):
            ours = blocked(case, tensors, cuts)
            assert ours.dtype == dtype
            error = (ours.double() - exact).abs()
            worst = float((error / ulp(exact, dtype)).max())
            assert worst <= 1, (seed, cuts, worst)
            assert float(error.max()) <= float(replay_error.max()), (seed, cuts)
            assert float(error.mean()) <= float(replay_error.mean()), (seed, cuts)
