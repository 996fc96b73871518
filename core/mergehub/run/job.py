"""What the runner hands an executor for one stage: the plan, where and how to write it, what is done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergehub.plan.planner import OutputTensor, Plan
from mergehub.run.journal import Journal

#: Called once per output tensor when it is written (or found already written by a resumed run).
Progress = Callable[[OutputTensor], None]


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: list[OutputTensor]


@dataclass
class ExecutorJob:
    """One stage for an executor: write ``shards`` (their layout fixed here) into ``directory``.

    The first ``journal.done`` tensors in plan order are already written (``--resume``), and so are the
    shards named in ``journal.shards``; an executor keeps them and writes the rest with
    ``backend.writer``. It records progress either tensor by tensor in plan order
    (``journal.advance()`` after each tensor's bytes are flushed) or shard by shard in any order
    (``journal.finish_shard(file, count)`` once a shard is complete and durable).
    """

    plan: Plan
    directory: Path
    shards: list[Shard]
    backend: Any
    journal: Journal
    progress: Progress | None = None


def layout_shards(tensors: list[OutputTensor], shard_size: int, basename: str = "model") -> list[Shard]:
    """Group tensors into shards of at most ``shard_size`` bytes (an oversized tensor gets its own), named
    ``<basename>.safetensors`` or ``<basename>-00001-of-0000N.safetensors`` (PEFT adapters: ``adapter_model``)."""
    groups: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    if len(groups) == 1:
        return [Shard(f"{basename}.safetensors", groups[0])]
    n = len(groups)
    return [Shard(f"{basename}-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def weight_map(shards: list[Shard]) -> dict[str, Any]:
    return {t.name: s.file for s in shards for t in s.tensors}


def finished_shards(job: ExecutorJob) -> set[str]:
    """The shards a resumed job must keep: recorded whole, or wholly within the first ``journal.done`` tensors."""
    done = set(job.journal.shards)
    remaining = job.journal.done
    for shard in job.shards:
        if remaining >= len(shard.tensors):
            done.add(shard.file)
        remaining = max(0, remaining - len(shard.tensors))
    return done


def plan_order_prefix(job: ExecutorJob) -> int:
    """How many tensors, in plan order, lie in the finished shards that open the plan (for executors that
    record tensor by tensor and resume work another executor recorded shard by shard)."""
    finished, count = finished_shards(job), 0
    for shard in job.shards:
        if shard.file not in finished:
            break
        count += len(shard.tensors)
    return count
