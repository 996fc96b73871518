"""DARE and DELLA work through a block's pieces on a pool of threads: the bytes must not depend on the
number of workers, the per-row sort of (key, column) composites must equal a stable argsort, and the
lane streams must give every thread the same lanes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from mergehub import MergeInputs
from mergehub.maths import dropout, randstream, workers
from mergehub.testkit.tensors import merge_in_blocks, related_tensors

FACTORIES = {"della": dropout.della_blocks, "della_linear": dropout.della_linear_blocks,
             "dare_ties": dropout.dare_ties_blocks, "dare_linear": dropout.dare_linear_blocks}
PARAMS = [{}, {"weight": 0.6, "density": 0.5, "epsilon": 0.2}, {"weight": 0.5, "density": 0.7, "epsilon": 0.1}]
SHARED = {"normalize": True, "rescale": True, "lambda": 1.0, "int8_mask": False}


def merged(method: str, tensors: list[torch.Tensor], rows_per_block: int) -> torch.Tensor:
    rows = tensors[0].shape[0]
    inputs = MergeInputs("t", tensors, 0, PARAMS[: len(tensors)], SHARED, generator=torch.Generator().manual_seed(3),
                         full_shape=tuple(tensors[0].shape))
    return merge_in_blocks(FACTORIES[method], inputs, [*range(0, rows, rows_per_block), rows], seed=3)


@pytest.mark.parametrize("method", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_bytes_do_not_depend_on_the_worker_count(method, dtype, monkeypatch):
    tensors = related_tensors((1200, 300), dtype, n=3)  # several pieces per block, a short last piece
    monkeypatch.setattr(dropout, "PIECE_ELEMENTS", 1 << 15)
    monkeypatch.setattr(workers, "THREADS", 1)
    one = merged(method, tensors, 700)
    monkeypatch.setattr(workers, "THREADS", 2)
    two = merged(method, tensors, 700)
    assert torch.equal(one, two)
    assert torch.equal(merged(method, tensors, 1200), one)


def test_workers_run_torch_on_one_thread_and_the_callers_setting_stays():
    before = torch.get_num_threads()
    pool = workers.pool()
    assert torch.get_num_threads() == before
    assert set(pool.map(lambda _: torch.get_num_threads(), range(8))) == {1}


@pytest.mark.parametrize("dtype,shape", [(np.uint16, (50, 300)), (np.uint16, (3, 70_000)), (np.uint32, (40, 257)),
                                         (np.uint32, (2, 1)), (np.int64, (5, 33))])
def test_sorted_columns_is_a_stable_argsort(dtype, shape):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 40, shape).astype(dtype)  # many equal keys
    keys[0, :] = np.iinfo(dtype).max  # the top bit, where the columns are shifted in
    assert np.array_equal(dropout.sorted_columns(keys), np.argsort(keys, axis=-1, kind="stable"))


def test_by_rank_puts_each_rank_value_where_its_entry_is():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 9, (7, 100)).astype(np.uint16)
    table = rng.integers(-1000, 1000, 100).astype(np.int16)
    order = np.argsort(keys, axis=-1, kind="stable")
    expected = np.empty_like(keys, dtype=np.int16)
    np.put_along_axis(expected, order, np.broadcast_to(table, keys.shape), axis=-1)
    assert np.array_equal(dropout.by_rank(keys, np.tile(table, 7)), expected.reshape(-1))


def test_lane_streams_give_every_thread_the_same_lanes():
    stream = randstream.LaneStream(11, 1)
    ranges = [(start, 1000 + start % 7) for start in range(0, 40_000, 997)]
    alone = [stream.lanes_array(s, n).copy() for s, n in ranges]
    with ThreadPoolExecutor(4) as threads:
        for _ in range(3):
            together = list(threads.map(lambda item: stream.lanes_array(*item).copy(), ranges))
            assert all(np.array_equal(a, b) for a, b in zip(alone, together))
