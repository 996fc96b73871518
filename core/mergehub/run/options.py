"""One object for every setting of a run, from the command line to the executor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergehub.maths.blocks import DEFAULT_MAX_MEMORY

#: mergekit's default shard size, 5 billion bytes.
DEFAULT_SHARD_SIZE = 5 * 1000**3


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe. ``out`` is the final merge's directory; named stages of a multi-stage
    recipe go to ``intermediate`` (default ``<out>.stages``)."""

    out: Path
    intermediate: Path | None = None
    force: bool = False  # replace existing outputs (once the new ones are complete); discard interrupted work
    reuse: bool = True  # multi-stage: keep stage outputs whose recipe and inputs are unchanged
    resume: bool = False  # carry on from an interrupted run's finished tensors
    shard_size: int = DEFAULT_SHARD_SIZE
    max_memory: int = DEFAULT_MAX_MEMORY
    seed: int | None = None
    device: str = "cpu"
    allow_crimes: bool = False
    trust_remote_code: bool = False
    allow_nonfinite: bool = False
    executor: str = "local"
    executor_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stages_dir(self) -> Path:
        return self.intermediate or default_intermediate(self.out)


def default_intermediate(out: Path) -> Path:
    """Where a multi-stage recipe's named stages go unless --intermediate-dir says otherwise."""
    return out.parent / f"{out.name}.stages"
