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

    The first ``journal.done`` tensors in plan order are already written (``--resume``); an executor
    keeps them, writes the rest with ``backend.writer`` and calls ``journal.advance()`` after each
    tensor's bytes are flushed, in plan order.
    """

    plan: Plan
    directory: Path
    shards: list[Shard]
    backend: Any
    journal: Journal
    progress: Progress | None = None


def layout_shards(tensors: list[OutputTensor], shard_size: int) -> list[Shard]:
    """Group tensors into shards of at most ``shard_size`` bytes (an oversized tensor gets its own)."""
    groups: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    if len(groups) == 1:
        return [Shard("model.safetensors", groups[0])]
    n = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def weight_map(shards: list[Shard]) -> dict[str, Any]:
    return {t.name: s.file for s in shards for t in s.tensors}
