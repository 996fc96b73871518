"""The built-in ``local`` executor: this machine, one tensor at a time, writing while it computes.

Registered by the core itself (:mod:`mergehub.plugin.builtin`) through the executor hook, like any
other executor plugin.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mergehub.plan.planner import OutputTensor
from mergehub.run.compute import TensorComputer
from mergehub.run.interrupt import StopRequest
from mergehub.run.job import ExecutorJob, Progress, plan_order_prefix
from mergehub.run.journal import Journal
from mergehub.run.options import RunOptions


class LocalExecutor:
    """Streams each shard: the maths on this thread, file writes on a second one."""

    def __init__(self, options: RunOptions, source: Any = None):
        """``source`` computes each tensor's blocks (``compute(spec)``); default: a :class:`TensorComputer` of the
        job's plan. ``mergehub moe`` passes its assembler, which copies pieces instead of merging."""
        self.options = options
        self.source = source

    def run(self, job: ExecutorJob) -> None:
        """Compute and write ``job.shards`` in plan order, keeping the ``job.journal.done`` tensors already written.

        Writing happens on a second thread (file writes release the GIL), at most two blocks
        behind the maths, so reading, merging and writing overlap within the memory bound. Each
        tensor is recorded in the journal once its bytes are in the kernel's hands.
        """
        options = self.options
        if job.journal.shards:  # resuming shards written in any order: keep those that open the plan
            job.journal.done, job.journal.shards = plan_order_prefix(job), {}
            job.journal.save()
        computer = self.source or TensorComputer(job.plan, device=options.device, seed=options.seed,
                                                 max_memory=options.max_memory, allow_nonfinite=options.allow_nonfinite)
        skip = job.journal.done
        with ThreadPoolExecutor(1, thread_name_prefix="mergehub-writer") as pool, StopRequest() as stop:
            for shard in job.shards:
                if skip >= len(shard.tensors):
                    skip -= len(shard.tensors)
                    _advance(job.progress, shard.tensors)
                    continue
                entries = [(t.name, t.out_dtype, t.shape) for t in shard.tensors]
                path = job.directory / shard.file
                opener = job.backend.writer(path, entries, {"format": "pt"}, skip) if skip else \
                    job.backend.writer(path, entries, {"format": "pt"})
                with opener as writer:
                    _advance(job.progress, shard.tensors[:skip])
                    _write_shard(computer, pool, writer, shard.tensors[skip:], job, stop)
                skip = 0


def _write_shard(computer: Any, pool: ThreadPoolExecutor, writer: Any, tensors: list[OutputTensor],
                 job: ExecutorJob, stop: StopRequest) -> None:
    pending: deque[Future] = deque()
    try:
        for spec in tensors:
            for block in computer.compute(spec):
                stop.check()  # Ctrl-C/SIGTERM: stop here, with every written tensor recorded
                pending.append(pool.submit(writer.write, spec.name, block))
                while len(pending) > 1:
                    pending.popleft().result()
            pending.append(pool.submit(_record, writer, job.journal))
            if job.progress:
                job.progress(spec)
    finally:  # never close the shard under a write still running
        while pending:
            pending.popleft().result()


def _record(writer: Any, journal: Journal) -> None:
    """One more tensor is complete: flush it to the kernel, then say so in the journal."""
    writer.flush()
    journal.advance()


def _advance(progress: Progress | None, tensors: list[OutputTensor]) -> None:
    for spec in tensors if progress else []:
        progress(spec)  # type: ignore[misc]
