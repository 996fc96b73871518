"""``mergehub schema``: print the recipe schema, a method's parameters, or the architecture schema."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from mergehub.cli.common import registry
from mergehub.cli.render import out, warn
from mergehub.common.errors import MergehubError
from mergehub.plugin.registry import core_schema
from mergehub.plugin.specs import MethodSpec
from mergehub.recipe.schema import recipe_schema
from mergehub.testkit.contract import SCOPES
from mergehub.testkit.contract import parameter_table as markdown_table

HELP = "print the recipe JSON Schema, or one method's parameters (--markdown: its README table)"


def configure(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--method", metavar="NAME", help="show the parameters of this merge method")
    group.add_argument("--architecture", action="store_true", help="print the schema architecture definitions follow")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="with --method: print the recipe schema for that method")
    form.add_argument("--markdown", action="store_true",
                      help="with --method: print the parameter table its README must contain (paste it there)")


def run(args: argparse.Namespace) -> int:
    if args.markdown and args.method is None:
        raise MergehubError("--markdown prints one method's parameter table",
                            hint="name the method: mergehub schema --method NAME --markdown")
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
    elif args.markdown:
        table = markdown_table(method)
        if table:
            print(table, end="")
        else:
            warn(f"method '{method.name}' takes no parameters: its README needs no parameter table")
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
    for name, prop in method.parameters.get("properties", {}).items():
        default = "required" if name in required else json.dumps(prop.get("default"))
        table.add_row(name, SCOPES[prop["x-scope"]], prop["type"], default, bounds(prop), prop["description"])
    return table


def contract_line(method: MethodSpec) -> str:
    inputs = f"{method.min_inputs}" + (f"–{method.max_inputs}" if method.max_inputs != method.min_inputs else "")
    if method.max_inputs is None:
        inputs = f"{method.min_inputs} or more"
    return f"base model: {method.base}; inputs: {inputs}" + (f"; paper: {method.paper}" if method.paper else "")
