"""``mergehub validate CONFIG``: check a recipe against plugins and models, reading only headers."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergehub.cli.common import (
    add_config_argument,
    add_model_options,
    registry,
)
from mergehub.cli.moe import check, is_moe_recipe
from mergehub.cli.render import out, warn
from mergehub.plan.planner import Plan
from mergehub.recipe.yamlsource import read_recipe_file

HELP = "check a recipe (schema, models, layer ranges, parameters) without merging"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_model_options(parser)


def summary(plan: Plan) -> str:
    return (f"{plan.recipe.method.name} of {len(plan.models)} model(s) → {plan.num_layers} layers, "
            f"{len(plan.tensors)} tensors, {plan.bytes_to_write() / 1e6:.1f} MB")


def run(args: argparse.Namespace) -> int:
    from mergehub.plan.stages import plan_stages, split_stages, stage_warnings

    documents = read_recipe_file(args.config)
    if is_moe_recipe(documents):
        figures = check(documents[0])
        out.print(f"[green]ok[/green] {args.config}: {figures['format']} MoE of {figures['experts']} experts "
                  f"({figures['experts_per_token']} per token, gates from {figures['gate_mode']}) → {figures['layers']} "
                  f"layers, {figures['tensors']} tensors, {figures['write_bytes'] / 1e6:.1f} MB")
        return 0
    reg = registry()
    stem = args.config.stem
    stages = split_stages(documents, Path("merged") / stem, Path("merged") / f"{stem}.stages")
    plan_stages(stages, reg, args.allow_crimes, args.trust_remote_code)  # one stage: its own plain report
    for message in stage_warnings(stages):
        warn(message)
    for stage in stages:
        assert stage.plan is not None
        stage.plan.close()
        label = str(args.config) if len(stages) == 1 else f"stage {stage.label}"
        out.print(f"[green]ok[/green] {label}: {summary(stage.plan)}")
    return 0
