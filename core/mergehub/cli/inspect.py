"""``mergehub inspect MODEL``: how mergehub sees a model family, from config.json and tensor headers only."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from mergehub.cli.common import registry
from mergehub.cli.render import out, warn

HELP = ("show how mergehub sees a model (a directory or a Hub id org/name[@rev]): its architecture definition and "
        "where it comes from, layer kinds, other stacks, per-layer config keys, tied and vocabulary tensors, and "
        "tensors the definition does not cover; reads config.json and tensor headers only")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model directory, or a Hugging Face Hub id org/name[@revision]")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a plugin that derives the layout from the model itself (mergehub-arch-transformers) "
                             "use model classes shipped as Python code with the model, where it supports that")


def run(args: argparse.Namespace) -> int:
    from mergehub.models.inspection import inspect_model

    report = inspect_model(args.model, registry(), trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for message in report["definition"]["warnings"]:
        warn(message)
    show(report)
    return 0


def show(report: dict[str, Any]) -> None:
    definition, stack, tied = report["definition"], report["main_stack"], report["tied"]
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    where = "" if report["directory"] == report["model"] else f" ({escape(report['directory'])})"
    summary.add_row("model", escape(report["model"]) + where)
    summary.add_row("architecture", escape(f"{report['architecture'] or '?'} (model_type {report['model_type'] or '?'})"))
    summary.add_row("definition", f"{escape(definition['name'])}, {escape(definition['origin'])}")
    summary.add_row("layers", escape(f"{stack['layers']} ({stack['num_layers_key'] or 'counted from tensor names'})"))
    if tied["key"]:
        summary.add_row("tie key", escape(f"{tied['key']} = {json.dumps(tied['value'])}"))
    out.print(f"[bold]mergehub inspect {escape(report['model'])}[/bold]")
    out.print(summary)

    kinds = report["layer_kinds"]
    table = _table(f"layer kinds ({len(kinds)})", "kind", "layers", "tensors", "differs from kind 1")
    for number, kind in enumerate(kinds, start=1):
        diff = [f"[green]+ {escape(t)}[/green]" for t in kind["added"]] + [f"[red]- {escape(t)}[/red]" for t in kind["missing"]]
        table.add_row(str(number), layer_list(kind["layers"]), str(kind["tensors"]), "\n".join(diff))
    out.print(table)

    _section("other stacks", report["other_stacks"], ("prefix", "layers", "tensors"),
             lambda s: (escape(s["prefix"]), str(s["layers"]), str(s["tensors"])))
    _section("per-layer config keys", report["layer_config"], ("key", "form", "value", "source"),
             lambda k: (escape(k["key"]), k["form"], escape(compact(k["value"])), _source(k["source"])))
    _section("tied weights", tied["pairs"], ("weight", "tied to", "own copy in checkpoint"),
             lambda p: (escape(p["name"]), escape(p["tied_to"]), "yes" if p["own_copy"] else "no (tied)"))
    _section("vocabulary tensors", report["vocabulary"], ("tensor", "axis", "shape"),
             lambda v: (escape(v["name"]), str(v["axis"]),
                        " x ".join(map(str, v["shape"])) if v["shape"] is not None else "not in the checkpoint"))
    uncovered = report["uncovered"]
    if uncovered:
        _section(f"[yellow]tensors the definition does not cover ({len(uncovered)}): a merge does not write them[/yellow]",
                 uncovered, ("tensor",), lambda n: (escape(n),))
    else:
        out.print("[green]every tensor of the checkpoint is covered by the definition[/green]")


def layer_list(layers: list[int]) -> str:
    """Layer numbers, short: ``0-3``, ``0, 2``, ``1, 3, …, 47``."""
    if len(layers) >= 4 and layers[1] - layers[0] > 1 and all(b - a == layers[1] - layers[0] for a, b in zip(layers, layers[1:])):
        return f"{layers[0]}, {layers[1]}, …, {layers[-1]}"
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def compact(value: Any) -> str:
    """A config value for a table cell; a list that repeats a pattern is shown as the pattern and its count."""
    if isinstance(value, list) and len(value) >= 4:
        period = next(p for p in range(1, len(value) + 1) if all(v == value[i % p] for i, v in enumerate(value)))
        repeats, rest = divmod(len(value), period)
        if repeats >= 2:
            text = f"[{', '.join(map(str, value[:period]))}] x {repeats}"
            return text + (f", then {', '.join(map(str, value[:rest]))}" if rest else "")
    return json.dumps(value) if not isinstance(value, str) else value


def _source(source: str | None) -> str:
    return {"config.json": "config.json", "derived": "derived (not in config.json)"}.get(source or "", "not set")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


def _section(title: str, rows: list[Any], columns: tuple[str, ...], cells: Any) -> None:
    if not rows:
        out.print(f"{title}: none")
        return
    table = _table(title, *columns)
    for row in rows:
        table.add_row(*cells(row))
    out.print(table)
