"""``mergehub plugins``: what is installed, from which distribution, and whether it works."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from mergehub.cli.render import out
from mergehub.registry import build_registry

HELP = "list installed plugins (methods, architectures, IO backends) and their status"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def rows() -> list[dict[str, str]]:
    reg = build_registry()
    found = []
    for kind, table in (("method", reg.methods), ("architecture", reg.architectures), ("io", reg.io_backends)):
        for name, registered in sorted(table.items()):
            plugin = registered.plugin
            found.append({"kind": kind, "name": name, "distribution": plugin.distribution,
                          "version": plugin.version, "status": "ok"})
    for record in reg.plugins.values():
        if record.error or record.disabled:
            found.append({"kind": "-", "name": record.name, "distribution": record.distribution,
                          "version": record.version, "status": record.status})
    for conflict in reg.conflicts:
        found.append({"kind": "-", "name": "-", "distribution": "-", "version": "-", "status": f"conflict: {conflict}"})
    return found


def run(args: argparse.Namespace) -> int:
    found = rows()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    table = Table(title="mergehub plugins", title_justify="left")
    for column in ("kind", "name", "distribution", "version", "status"):
        table.add_column(column)
    for row in found:
        style = "green" if row["status"] == "ok" else "red"
        table.add_row(*(row[c] for c in ("kind", "name", "distribution", "version")), f"[{style}]{row['status']}[/{style}]")
    out.print(table)
    return 0
