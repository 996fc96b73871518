"""``mergehub validate CONFIG``: check a recipe against plugins and models, reading only headers."""

from __future__ import annotations

import argparse
from pathlib import Path

from mergehub.cli.common import (
    add_config_argument,
    add_model_options,
    plan_recipe,
    read_recipe,
    registry,
)
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
    reg = registry()
    documents = read_recipe_file(args.config)
    if len(documents) > 1:
        from mergehub.plan.stages import plan_stages, split_stages

        stages = split_stages(documents, Path("merged") / args.config.stem, Path("merged") / f"{args.config.stem}.stages")
        plan_stages(stages, reg, args.allow_crimes, args.trust_remote_code)
        for stage in stages:
            for message in stage.plan.warnings if stage.plan else []:
                warn(f"stage {stage.label}: {message}")
            out.print(f"[green]ok[/green] stage {stage.label}: {summary(stage.plan)}")  # type: ignore[arg-type]
        return 0
    recipe = read_recipe(str(args.config), reg, documents)
    plan = plan_recipe(recipe, reg, args.allow_crimes, args.trust_remote_code)
    plan.close()
    out.print(f"[green]ok[/green] {args.config}: {summary(plan)}")
    return 0
