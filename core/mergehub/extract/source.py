"""The bytes of each adapter tensor, module by module, for the local executor to write.

A module's delta is read in row blocks, factorised when its ``A`` is asked for, and its ``B`` is kept until it
is written next: memory holds one delta and its SVD, never a model. Whole tensors are copied in row blocks.
The writing itself (a partial directory, the journal of finished tensors, ``--resume``, fsync and the rename
into place) is :func:`mergehub.run.output.write_model`'s, as for merges. Each module's rank and error are kept
in a small file beside the journal, so a resumed run still reports the modules an earlier run wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mergehub.common import dtypes
from mergehub.extract import svd
from mergehub.extract.options import ExtractOptions
from mergehub.extract.plan import (
    FACTORISED,
    AdapterTensor,
    ExtractPlan,
    Module,
    load_delta,
    row_blocks,
)
from mergehub.run import allocator
from mergehub.run.local import LocalExecutor
from mergehub.run.options import RunOptions

STATS = "mergehub_extract_stats.json"


class ExtractSource:
    """``compute(spec)`` yields the blocks of one adapter tensor (the local executor's tensor source)."""

    def __init__(self, plan: ExtractPlan, options: ExtractOptions):
        self.plan, self.options = plan, options
        self.pending: dict[int, svd.Factors] = {}  # a module's factors, from its A until its B is written
        self.directory: Path | None = None
        allocator.tune()

    def attach(self, directory: Path) -> None:
        """Work in ``directory`` (the partial output): take up the ranks and errors an interrupted run recorded."""
        self.directory = directory
        try:
            recorded = json.loads((directory / STATS).read_text())
        except (OSError, ValueError):
            return
        for module in self.plan.modules:
            stats = recorded.get(module.name) if isinstance(recorded, dict) else None
            if module.stats is None and isinstance(stats, dict) and stats.get("rank") == module.rank:
                module.stats = stats

    def compute(self, spec: AdapterTensor) -> Iterator[torch.Tensor]:
        module = self.plan.modules[spec.module]
        if spec.part in ("A", "B"):
            factors = self.pending.pop(spec.module, None) if spec.part == "B" else None
            if factors is None:
                factors = self.factorise(module)
                if spec.part == "A":
                    self.pending[spec.module] = factors
            yield (factors.a if spec.part == "A" else factors.b).contiguous()
            return
        assert spec.source is not None
        reader = self.plan.finetune.reader
        if len(spec.shape) < 2:
            yield reader.read(spec.source).contiguous()
            return
        for start, stop in row_blocks(spec.shape, dtypes.ITEMSIZE[spec.out_dtype], self.options.max_memory):
            yield reader.read_rows(spec.source, start, stop).contiguous()

    def factorise(self, module: Module) -> svd.Factors:
        options = self.options
        delta = load_delta(self.plan, module, options.device, options.max_memory)
        rows = max(1, options.max_memory // max(1, 4 * delta.shape[1]))
        factors = svd.factorise(delta, module.rank, dtypes.to_torch(module.dtype), options.distribute_scale, rows)
        module.stats = {"rank": module.rank, "error": factors.error, "norm": factors.norm}
        self.record()
        return factors

    def record(self) -> None:
        if self.directory is None:
            return
        stats = {m.name: m.stats for m in self.plan.modules if m.stats is not None}
        path = self.directory / STATS
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, path)

    def complete(self) -> None:
        """Every factorised module's rank and error, measuring those a resumed run did not see (rare)."""
        for module in self.plan.modules:
            if module.how in FACTORISED and module.rank > 0 and module.stats is None:
                self.factorise(module)

    def finish(self, directory: Path) -> None:
        """Before the rename: the stats file has served its purpose."""
        (directory / STATS).unlink(missing_ok=True)


class ExtractExecutor:
    """The local executor, with the source attached to the partial directory it writes."""

    def __init__(self, options: RunOptions, source: ExtractSource):
        self.local = LocalExecutor(options, source)
        self.source = source

    def run(self, job: Any) -> None:
        self.source.attach(job.directory)
        self.local.run(job)
