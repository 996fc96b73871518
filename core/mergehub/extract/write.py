"""Write a planned adapter: atomically, locked and resumably, through the same output code as merges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergehub.common.version import __version__
from mergehub.extract import adapter, report
from mergehub.extract.options import ExtractOptions
from mergehub.extract.plan import ExtractPlan
from mergehub.extract.source import ExtractExecutor, ExtractSource
from mergehub.plan.fingerprint import model_fingerprint
from mergehub.plugin.registry import Registry
from mergehub.run.job import Progress
from mergehub.run.options import RunOptions
from mergehub.run.output import write_model

#: One file, as PEFT writes adapters (and mergekit-extract-lora too).
ONE_SHARD = 1 << 62


def identity(plan: ExtractPlan, options: ExtractOptions) -> dict[str, Any]:
    """What must be unchanged for ``--resume`` to continue an interrupted extraction."""
    return {"mergehub": __version__, "method": "extract-lora", "options": options.identity(),
            "inputs": {str(m.ref): model_fingerprint(m) for m in plan.models}, "device": options.device,
            "tensors": len(plan.tensors)}


def write_adapter(plan: ExtractPlan, options: ExtractOptions, registry: Registry, out: Path, *, force: bool,
                  resume: bool, command: str, progress: Progress | None = None) -> ExtractSource:
    """Extract into ``out``; the source holds every module's rank and error afterwards."""
    run_options = RunOptions(out=out, force=force, resume=resume, shard_size=ONE_SHARD, max_memory=options.max_memory,
                             device=options.device)
    source = ExtractSource(plan, options)
    backend = registry.io_backend("safetensors").load()

    def files(directory: Path) -> None:
        source.complete()
        base = plan.refs[1]
        config = adapter.adapter_config(base.path, base.revision, plan.ranks(), plan.modules_to_save(),
                                        any(m.bias is not None and m.rank > 0 for m in plan.modules))
        (directory / adapter.CONFIG).write_text(json.dumps(config, indent=4) + "\n")
        (directory / "README.md").write_text(report.card_text(plan, options, out.name, command))
        source.finish(directory)

    write_model(plan, out, run_options, ExtractExecutor(run_options, source), backend,  # type: ignore[arg-type]
                replace=force, identity=identity(plan, options), progress=progress, files=files,
                basename=adapter.BASENAME)
    return source
