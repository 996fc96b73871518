"""``mergehub validate CONFIG``: check a recipe against plugins and models, reading only headers."""

from __future__ import annotations

import argparse

from mergehub.cli.common import add_config_argument, add_model_options, plan_recipe, read_recipe, registry
from mergehub.cli.render import out

HELP = "check a recipe (schema, models, layer ranges, parameters) without merging"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    reg = registry()
    recipe = read_recipe(str(args.config), reg)
    plan = plan_recipe(recipe, reg, args.allow_crimes)
    plan.close()
    out.print(f"[green]ok[/green] {args.config}: {recipe.method.name} of {len(plan.models)} model(s) → "
              f"{plan.num_layers} layers, {len(plan.tensors)} tensors, {plan.bytes_to_write() / 1e6:.1f} MB")
    return 0
