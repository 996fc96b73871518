"""The worker threads block kernels spread a block's pieces over, each running torch single-threaded.

Pieces of a block are a few hundred KB: an OpenMP team per elementwise op spends more waking its
threads than it saves, and numpy (PCG64 lanes, sorts) has no threads at all. One worker per core,
each working through whole pieces with torch on one thread, keeps every core busy instead; nested
OpenMP teams on every worker would oversubscribe the cores. Kernels keep their bytes independent of
the thread count by making a piece's arithmetic the same on any thread and joining results in order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

#: Worker threads (1: the calling thread does the work).
THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

T = TypeVar("T")
R = TypeVar("R")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the workers were not copied, so a new pool is started when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _single_threaded_torch() -> None:
    """Pool initializer: this worker's torch ops run on it alone. ``get_num_threads`` first, so that
    torch's lazy per-thread set-up does not later undo the 1."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def pool() -> ThreadPoolExecutor:
    """The workers, all started now; the caller's torch thread count (which ``set_num_threads`` also
    writes for threads started later) is restored."""
    global _pool
    with _pool_lock:
        if _pool is None:
            threads = torch.get_num_threads()
            workers = ThreadPoolExecutor(THREADS, thread_name_prefix="mergehub-worker", initializer=_single_threaded_torch)
            started = threading.Barrier(THREADS)  # one task per worker: every thread is started and set up
            list(workers.map(lambda _: started.wait(), range(THREADS)))
            torch.set_num_threads(threads)
            _pool = workers
    return _pool


def each(work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``work`` applied to every item, on the workers when there are several; results in order."""
    if THREADS <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    return list(pool().map(work, items))


def in_runs(work: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    """``work`` over runs of consecutive ``items``, one run per worker; the results in item order.

    One task per worker (not per item) keeps the pool's hand-offs to a couple per block.
    """
    runs = min(THREADS, len(items))
    if runs <= 1:
        return work(list(items))
    groups = [list(items[i * len(items) // runs:(i + 1) * len(items) // runs]) for i in range(runs)]
    return [result for part in pool().map(work, groups) for result in part]


def spans(count: int, align: int = 64) -> list[tuple[int, int]]:
    """``count`` elements cut into one contiguous ``[start, stop)`` span per worker, starts on multiples
    of ``align`` (whole cache lines), for :func:`each` over an elementwise kernel."""
    parts = max(1, min(THREADS, count // max(1, align)))
    cuts = [min(count, (i * count // parts) // align * align) for i in range(parts)] + [count]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a] or [(0, count)]
