"""``mergehub mega CONFIG``: run a multi-stage recipe (several YAML documents)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergehub.cli import merge as merge_verb
from mergehub.cli.common import registry
from mergehub.cli.render import err, progress_bar, warn
from mergehub.recipe.yamlsource import Document, read_recipe_file

HELP = "run a multi-stage recipe: documents separated by ---, later ones using earlier ones by name"


def configure(parser: argparse.ArgumentParser) -> None:
    merge_verb.configure(parser)  # the same options; --intermediate-dir and --no-reuse are the stage ones


def run(args: argparse.Namespace, documents: list[Document] | None = None) -> int:
    from mergehub.plan.stages import plan_stages, split_stages
    from mergehub.run.runner import (  # imports torch
        RunOptions,
        default_intermediate,
        run_stages,
    )

    reg = registry()
    documents = documents or read_recipe_file(args.config)
    out: Path = args.out or Path("merged") / args.config.stem
    intermediate: Path = args.intermediate_dir or default_intermediate(out)
    stages = split_stages(documents, out, intermediate)
    plan_stages(stages, reg, args.allow_crimes, args.trust_remote_code)
    for stage in stages:
        for message in stage.plan.warnings if stage.plan else []:
            warn(f"stage {stage.label}: {message}")
    options = RunOptions(force=args.force, reuse=not args.no_reuse, shard_size=args.shard_size, seed=args.seed,
                         device=args.device, allow_crimes=args.allow_crimes, trust_remote_code=args.trust_remote_code,
                         max_memory=args.max_memory,
                         resume=args.resume, allow_nonfinite=args.allow_nonfinite)
    merge_verb.check_device(args.device)
    backend = reg.io_backend("safetensors").load()
    err.print(f"{len(stages)} stages: " + " → ".join(s.label for s in stages))
    run_stages(stages, reg, backend, options, lambda stage, text: err.print(f"[green]stage {stage.label}:[/green] {text}"),
               lambda plan: progress_bar(plan.bytes_to_write(), len(plan.tensors)))
    return 0
