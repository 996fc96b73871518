"""``mergehub plan CONFIG``: what a (single or multi-stage) recipe will read, write, use and take."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from mergehub.cli.common import (
    add_config_argument,
    add_model_options,
    parse_size,
    registry,
)
from mergehub.cli.moe import check, is_moe_recipe
from mergehub.cli.render import out
from mergehub.maths.blocks import DEFAULT_MAX_MEMORY
from mergehub.recipe.yamlsource import Document, read_recipe_file

HELP = "show per stage what a recipe will read and write, its peak memory, disk and time, without merging"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--out", type=Path, help="output directory, as for merge (default: ./merged/<config name>)")
    parser.add_argument("--intermediate-dir", type=Path, metavar="DIR", help="as for merge/mega")
    parser.add_argument("--seed", type=int, default=None, help="as for merge (part of a randomised stage's identity)")
    parser.add_argument("--max-memory", type=parse_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                        help="as for merge: the memory figure is that of the largest block merged within it")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_model_options(parser)


def gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.2f} MB"


def run(args: argparse.Namespace) -> int:
    from mergehub.plan.estimate import estimate
    from mergehub.plan.fingerprint import stored_fingerprint
    from mergehub.plan.stages import plan_stages, split_stages
    from mergehub.run.options import default_intermediate
    from mergehub.run.runner import fingerprints

    documents = read_recipe_file(args.config)
    if is_moe_recipe(documents):
        return moe_plan(args, documents[0])
    reg = registry()
    target: Path = args.out or Path("merged") / args.config.stem
    stages = split_stages(documents, target, args.intermediate_dir or default_intermediate(target))
    plan_stages(stages, reg, args.allow_crimes, args.trust_remote_code)
    prints = fingerprints(stages, reg, args.seed)
    rows = []
    for stage in stages:
        figures = estimate(stage.plan, args.max_memory).as_dict()  # type: ignore[arg-type]
        reusable = stored_fingerprint(stage.output) == prints[str(stage.output)]
        rows.append({"stage": stage.label, "output": str(stage.output), "reuse": reusable, **figures})
    total = {
        "read_bytes": sum(r["read_bytes"] for r in rows if not r["reuse"]),
        "write_bytes": sum(r["write_bytes"] for r in rows if not r["reuse"]),
        "disk_bytes": sum(r["write_bytes"] for r in rows),
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rows),
        "seconds": sum(r["seconds"] for r in rows if not r["reuse"]),
    }
    if args.json:
        print(json.dumps({"stages": rows, "total": total}, indent=2))
        return 0
    table = Table(title=f"plan for {args.config}", title_justify="left")
    for column in ("stage", "method", "inputs", "layers", "tensors", "read", "write", "peak memory", "time", "status"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["stage"], r["method"], "\n".join(r["inputs"]), str(r["layers"]), str(r["tensors"]),
                      gb(r["read_bytes"]), gb(r["write_bytes"]), gb(r["peak_memory_bytes"]), f"~{r['seconds']:.0f} s",
                      "reuse" if r["reuse"] else "run")
    out.print(table)
    out.print(f"disk for intermediates and output: {gb(total['disk_bytes'])}; to read {gb(total['read_bytes'])}, "
              f"write {gb(total['write_bytes'])}; peak memory of the maths ≤ {gb(total['peak_memory_bytes'])} "
              f"(Python and torch themselves take ~150 MB more); "
              f"time ~{total['seconds']:.0f} s (rough)")
    return 0


def moe_plan(args: argparse.Namespace, document: Document) -> int:
    """The figures of an MoE recipe (``mergehub moe``)."""
    figures = check(document, allow_identical=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    out.print(f"MoE plan for {args.config}: {figures['format']}, {figures['experts']} experts "
              f"({figures['experts_per_token']} per token" + (f", {figures['shared']} shared" if figures["shared"] else "")
              + f"), gates from {figures['gate_mode']}; {figures['layers']} layers, {figures['tensors']} tensors; "
              f"read {gb(figures['read_bytes'])}, write {gb(figures['write_bytes'])} (disk for the output); "
              f"peak memory ≤ {gb(figures['peak_memory_bytes'])}"
              + (" (the base model, loaded once for hidden-state gates)" if figures["gate_mode"] == "hidden" else ""))
    return 0
