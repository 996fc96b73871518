"""Run a recipe: one document or several (a multi-stage recipe), through one path.

A single recipe is a multi-stage recipe of one stage, written to ``--out``. Every stage is
validated and planned before the first one runs; stages whose recipe and inputs are unchanged
are reused, the rest are merged in dependency order by the chosen executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from mergehub.common.errors import MergehubError
from mergehub.plan.fingerprint import (
    STAMP,
    stage_fingerprint,
    stamp,
    stored_fingerprint,
    stored_stamp,
)
from mergehub.plan.planner import Plan, make_plan
from mergehub.plan.stages import Stage, plan_stages, split_stages, stage_warnings
from mergehub.plugin.registry import Registry
from mergehub.recipe.yamlsource import Document
from mergehub.run.journal import run_identity
from mergehub.run.options import RunOptions
from mergehub.run.output import check_output, check_supported, write_model


@dataclass
class Reporter:
    """How the runner speaks: ``say(lead, text)`` for results (the lead is highlighted), ``warn`` for
    warnings, ``progress`` for a stage's progress bar."""

    say: Callable[[str, str], None]
    warn: Callable[[str], None]
    progress: Callable[[Plan], AbstractContextManager] | None = None


def run_recipe(documents: list[Document], registry: Registry, options: RunOptions, reporter: Reporter) -> list[Stage]:
    """Plan every stage, then merge those that need it; returns the stages (with their plans)."""
    started = time.perf_counter()
    stages = split_stages(documents, options.out, options.stages_dir)
    single = len(stages) == 1
    if single:
        check_output(options.out, options.force)  # before any planning: an existing output is refused at once
    check_device(options.device)
    executor = make_executor(registry, options)
    plan_stages(stages, registry, options.allow_crimes, options.trust_remote_code)
    for message in stage_warnings(stages):
        reporter.warn(message)
    backend = registry.io_backend("safetensors").load()
    if not single:
        reporter.say("", f"{len(stages)} stages: " + " → ".join(s.label for s in stages))
    run_stages(stages, registry, options, executor, backend, reporter, started if single else None)
    return stages


def run_stages(stages: list[Stage], registry: Registry, options: RunOptions, executor: Any, backend: Any,
               reporter: Reporter, started: float | None = None) -> None:
    """Merge the stages that need it, in order; ``started`` is when the run began (for a one-stage recipe's timing)."""
    single = len(stages) == 1
    prints = fingerprints(stages, registry, options.seed)
    to_run = stages if single else decide(stages, prints, options)
    for stage in stages:
        if stage not in to_run:
            reporter.say(f"stage {stage.label}:", f"reused {stage.output} (recipe and inputs unchanged)")
            continue
        began = started if started is not None else time.perf_counter()
        plan = _final_plan(stage, registry, options)
        check_supported(plan)
        extra = {} if single else {STAMP: stamp(prints[str(stage.output)], stage.name, recipe_id(stage))}
        try:
            with reporter.progress(plan) if reporter.progress else nullcontext(None) as advance:
                identity = run_identity(plan, registry, seed=options.seed, shard_size=options.shard_size,
                                        device=options.device, inputs=prints)
                write_model(plan, stage.output, options, executor, backend, replace=options.force or not single,
                            identity=identity, progress=advance, extra_files=extra)
        finally:
            plan.close()
        reporter.say(*_merged(plan, stage, single, time.perf_counter() - began))


def _final_plan(stage: Stage, registry: Registry, options: RunOptions) -> Plan:
    """The stage's plan against real files: the one already made, unless it read an earlier stage's planned output."""
    assert stage.recipe is not None and stage.plan is not None
    if not stage.deps:
        return stage.plan
    return make_plan(stage.recipe, registry, options.allow_crimes, trust_remote_code=options.trust_remote_code)


def _merged(plan: Plan, stage: Stage, single: bool, seconds: float) -> tuple[str, str]:
    if single:
        total = plan.bytes_to_write()
        return "merged", (f"{len(plan.tensors)} tensors ({total / 1e6:.1f} MB, {plan.num_layers} layers) "
                          f"with {plan.recipe.method.name} into {stage.output} in {seconds:.1f} s")
    return f"stage {stage.label}:", (f"merged {len(plan.tensors)} tensors with {plan.recipe.method.name} "
                                     f"into {stage.output} in {seconds:.1f} s")


def make_executor(registry: Registry, options: RunOptions) -> Any:
    """The executor ``options.executor`` names, built with the options (its own settings validated first)."""
    spec = registry.executor(options.executor)
    errors = sorted(jsonschema.Draft202012Validator(spec.options).iter_errors(dict(options.executor_options)),
                    key=lambda e: list(e.path))
    if errors:
        raise MergehubError(f"executor '{spec.name}': invalid --executor-option: {errors[0].message}",
                            hint=f"options it takes: {', '.join(spec.options.get('properties', {})) or 'none'}")
    return spec.load()(options)


def check_device(device: str) -> None:
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError, AssertionError) as exc:  # a CPU-only torch asserts for cuda
        raise MergehubError(f"cannot use device '{device}': {exc}",
                            hint="use --device cpu, or a device this machine has") from exc


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


def recipe_id(stage: Stage) -> str | None:
    file = stage.document.file
    return str(Path(file).resolve()) if file else None
