"""Run a multi-stage recipe: reuse what is unchanged, merge the rest in dependency order."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from mergehub.common.errors import MergehubError
from mergehub.maths.blocks import DEFAULT_MAX_MEMORY
from mergehub.plan.fingerprint import (
    STAMP,
    stage_fingerprint,
    stamp,
    stored_fingerprint,
    stored_stamp,
)
from mergehub.plan.planner import Plan, make_plan
from mergehub.plan.stages import Stage
from mergehub.plugin.registry import Registry
from mergehub.run.journal import run_identity
from mergehub.run.output import check_supported, write_model

Report = Callable[[Stage, str], None]


@dataclass(frozen=True)
class RunOptions:
    force: bool = False
    reuse: bool = True
    shard_size: int = 5 * 1000**3
    seed: int | None = None
    device: str = "cpu"
    allow_crimes: bool = False
    trust_remote_code: bool = False
    max_memory: int = DEFAULT_MAX_MEMORY
    resume: bool = False
    allow_nonfinite: bool = False


def fingerprints(stages: list[Stage], registry: Registry, seed: int | None) -> dict[str, str]:
    """Each stage's fingerprint, from the plans made before anything ran; keyed by output path."""
    found: dict[str, str] = {}
    for stage in stages:
        assert stage.plan is not None
        found[str(stage.output)] = stage_fingerprint(stage.plan, registry, seed, found)
    return found


def decide(stages: list[Stage], prints: dict[str, str], options: RunOptions) -> list[Stage]:
    """The stages to run; refuses, before anything runs, to replace what it must not."""
    to_run = []
    for stage in stages:
        out = stage.output
        if options.reuse and out.is_dir() and stored_fingerprint(out) == prints[str(out)]:
            continue
        to_run.append(stage)
        # an earlier result of this very recipe is stale, not somebody else's work: it may be replaced
        ours = stored_stamp(out).get("recipe") == recipe_id(stage)
        if out.exists() and not options.force and not ours:
            raise MergehubError(f"output directory {out} of stage {stage.label} already exists "
                                "and was not written by this recipe",
                                hint="choose another --out/--intermediate-dir, or pass --force to replace it")
    return to_run


def run_stages(stages: list[Stage], registry: Registry, backend: object, options: RunOptions, report: Report,
               progress_for: Callable[[Plan], AbstractContextManager] | None = None) -> None:
    prints = fingerprints(stages, registry, options.seed)
    to_run = decide(stages, prints, options)
    for stage in stages:
        if stage not in to_run:
            report(stage, f"reused {stage.output} (recipe and inputs unchanged)")
            continue
        started = time.perf_counter()
        assert stage.recipe is not None
        plan = make_plan(stage.recipe, registry, options.allow_crimes,
                         trust_remote_code=options.trust_remote_code)  # now with the real input files
        check_supported(plan)
        try:
            with progress_for(plan) if progress_for else nullcontext(None) as advance:
                identity = run_identity(plan, registry, seed=options.seed, shard_size=options.shard_size,
                                        device=options.device, inputs=prints)
                write_model(plan, stage.output, backend, force=True, shard_size=options.shard_size, seed=options.seed,
                            device=options.device, progress=advance, max_memory=options.max_memory,
                            extra_files={STAMP: stamp(prints[str(stage.output)], stage.name, recipe_id(stage))},
                            identity=identity, resume=options.resume, restart=options.force,
                            allow_nonfinite=options.allow_nonfinite)
        finally:
            plan.close()
        report(stage, f"merged {len(plan.tensors)} tensors with {plan.recipe.method.name} into {stage.output} "
                      f"in {time.perf_counter() - started:.1f} s")


def recipe_id(stage: Stage) -> str | None:
    file = stage.document.file
    return str(Path(file).resolve()) if file else None


def default_intermediate(out: Path) -> Path:
    return out.parent / f"{out.name}.stages"
