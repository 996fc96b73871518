"""``mergehub schema``: print the recipe schema, a method's parameters, or the architecture schema."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from mergehub.cli.common import registry
from mergehub.cli.render import out
from mergehub.recipe_schema import recipe_schema
from mergehub.registry import core_schema
from mergehub.specs import MethodSpec

HELP = "print the recipe JSON Schema, or one method's parameters"


def configure(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--method", metavar="NAME", help="show the parameters of this merge method")
    group.add_argument("--architecture", action="store_true", help="print the schema architecture definitions follow")
    parser.add_argument("--json", action="store_true", help="with --method: print the recipe schema for that method")


def run(args: argparse.Namespace) -> int:
    if args.architecture:
        print(json.dumps(core_schema("architecture"), indent=2))
        return 0
    reg = registry()
    if args.method is None:
        print(json.dumps(recipe_schema(None, list(reg.methods)), indent=2))
        return 0
    method = reg.method(args.method)
    if args.json:
        print(json.dumps(recipe_schema(method), indent=2))
    else:
        out.print(parameter_table(method))
        out.print(contract_line(method))
    return 0


def bounds(prop: dict) -> str:
    parts = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{sign} {prop[key]}")
    if "enum" in prop:
        parts.append("one of " + ", ".join(map(str, prop["enum"])))
    return ", ".join(parts)


def parameter_table(method: MethodSpec) -> Table:
    table = Table(title=f"{method.name}: {method.summary}", title_justify="left")
    for column in ("parameter", "scope", "type", "default", "range", "description"):
        table.add_column(column)
    required = set(method.required_params())
    scopes = {"input": "per model", "non_base": "per model (not base)", "shared": "shared"}
    for name, prop in method.parameters.get("properties", {}).items():
        default = "required" if name in required else json.dumps(prop.get("default"))
        table.add_row(name, scopes[prop["x-scope"]], prop["type"], default, bounds(prop), prop["description"])
    return table


def contract_line(method: MethodSpec) -> str:
    inputs = f"{method.min_inputs}" + (f"–{method.max_inputs}" if method.max_inputs != method.min_inputs else "")
    if method.max_inputs is None:
        inputs = f"{method.min_inputs} or more"
    return f"base model: {method.base}; inputs: {inputs}" + (f"; paper: {method.paper}" if method.paper else "")
