"""``mergehub plugins``: what is installed, from which distribution, and whether it works."""

from __future__ import annotations

import argparse
import json
import sys

from rich.markup import escape
from rich.table import Table

from mergehub.cli.render import err, out
from mergehub.plugin import catalog
from mergehub.plugin.registry import Registry, build_registry

HELP = "list installed plugins (methods, architectures, IO backends, executors, MoE formats) and their status"
COLUMNS = ("kind", "name", "distribution", "version", "status")
#: The name listed for a plugin that derives architecture definitions from the model itself.
DERIVED = "(derived)"
DESCRIPTION = f"""{HELP}.

One row per method, architecture definition, IO backend, executor and MoE output format, with the distribution and version that
provide it (the built-in 'local' executor comes with mergehub itself);
a plugin that derives definitions from the model itself (mergehub-arch-transformers) is listed as architecture
'{DERIVED}'. Plugins that failed to load, are switched off (MERGEHUB_DISABLE_PLUGINS, MERGEHUB_LOAD_PLUGINS) or
conflict are listed with kind '-' and their status.

On a terminal the listing is a table; piped or redirected it is plain text, one tab-separated row per line
after a header line (kind, name, distribution, version, status), never cut to the terminal's width; --json
prints a list of objects with those keys. When no plugin is loaded, a note on stderr says how to install the
standard set ({catalog.STANDARD}); the exit status is 0 all the same: the listing itself succeeded."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def rows(reg: Registry | None = None) -> list[dict[str, str]]:
    reg = reg or build_registry()
    found = []
    tables = (("method", reg.methods), ("architecture", reg.architectures), ("io", reg.io_backends),
              ("executor", reg.executors), ("moe-format", reg.moe_formats))
    for kind, table in tables:
        for name, registered in sorted(table.items()):
            plugin = registered.plugin
            found.append({"kind": kind, "name": name, "distribution": plugin.distribution,
                          "version": plugin.version, "status": "ok"})
    for _, plugin in reg.derivers:
        found.append({"kind": "architecture", "name": DERIVED, "distribution": plugin.distribution,
                      "version": plugin.version, "status": "ok"})
    for record in reg.plugins.values():
        if record.error or record.disabled:
            found.append({"kind": "-", "name": record.name, "distribution": record.distribution,
                          "version": record.version, "status": record.status})
    for conflict in reg.conflicts:
        found.append({"kind": "-", "name": "-", "distribution": "-", "version": "-", "status": f"conflict: {conflict}"})
    return found


def run(args: argparse.Namespace) -> int:
    reg = build_registry()
    found = rows(reg)
    if args.json:
        print(json.dumps(found, indent=2))
    elif out.is_terminal:
        table = Table(title="mergehub plugins", title_justify="left")
        for column in COLUMNS:  # a name too wide for the terminal is folded onto the next line, never cut
            table.add_column(column, overflow="fold")
        for row in found:
            style = "green" if row["status"] == "ok" else "red"
            cells = [escape(row[c]) for c in COLUMNS[:-1]]
            table.add_row(*cells, f"[{style}]{escape(row['status'])}[/{style}]")
        out.print(table)
    else:
        for row in [dict(zip(COLUMNS, COLUMNS)), *found]:
            sys.stdout.write("\t".join(" ".join(row[c].split()) for c in COLUMNS) + "\n")
    if not reg.loaded():
        switched_off = any(r.disabled for r in reg.plugins.values())
        note = ("no plugin is loaded, so mergehub can merge nothing: install the standard set of methods, "
                f"architectures and IO backends with {catalog.STANDARD}")
        if switched_off:
            note += ", or switch installed plugins back on (MERGEHUB_DISABLE_PLUGINS, MERGEHUB_LOAD_PLUGINS)"
        err.print(f"[yellow]note:[/yellow] {escape(note)}")
    return 0
