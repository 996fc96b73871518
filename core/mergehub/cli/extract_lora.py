"""``mergehub extract-lora``: a PEFT LoRA adapter from a fine-tune and its base (mergekit-extract-lora's options)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from mergehub.cli.common import parse_size, registry
from mergehub.cli.render import err, out, warn
from mergehub.maths.blocks import DEFAULT_MAX_MEMORY

HELP = "extract a PEFT LoRA adapter from a fine-tune and its base (truncated SVD of each module's delta)"


def _rank_by(text: str) -> float:
    from mergehub.extract.options import parse_rank_by

    try:
        return parse_rank_by(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="FINETUNE",
                        help="the fine-tuned model: a local directory or a Hub id org/name[@revision]")
    parser.add_argument("--base", "--base-model", dest="base", required=True, metavar="BASE",
                        help="the model it was fine-tuned from (same form)")
    parser.add_argument("--out", "--out-path", dest="out", type=Path, required=True, metavar="DIR",
                        help="the adapter directory to write (adapter_config.json, adapter_model.safetensors, README.md)")
    parser.add_argument("--rank", "--max-rank", dest="rank", type=int, default=128, metavar="R",
                        help="the rank of every module, or the most any module gets with --rank-by (default 128)")
    parser.add_argument("--rank-by", type=_rank_by, default=None, metavar="energy:F",
                        help="per module the smallest rank keeping share F of the delta's squared singular values "
                             "(at most --rank); modules whose rank is not the largest go to rank_pattern")
    parser.add_argument("--include", "--include-regex", "-i", dest="include", action="append", default=[],
                        metavar="REGEX", help="only modules whose name matches (re.search; repeatable); embeddings "
                                              "are still saved whole unless excluded, as in mergekit")
    parser.add_argument("--exclude", "--exclude-regex", "-e", dest="exclude", action="append", default=[],
                        metavar="REGEX", help="leave out modules whose name matches (repeatable)")
    parser.add_argument("--embed-lora", action=argparse.BooleanOptionalAction, default=False,
                        help="LoRA factors for the embeddings and the output head instead of saving them whole "
                             "(modules_to_save)")
    parser.add_argument("--save-module", dest="save_modules", action="extend", nargs="+", default=[], metavar="NAME",
                        help="save these modules whole (a full name or its last part, e.g. lm_head)")
    parser.add_argument("--sv-epsilon", type=float, default=0.0, metavar="E",
                        help="drop singular values at or below E (default 0: keep them all)")
    parser.add_argument("--distribute-scale", action=argparse.BooleanOptionalAction, default=True,
                        help="split the singular values between A and B as √S each (default), or put them all in A")
    parser.add_argument("--skip-undecomposable", action="store_true",
                        help="leave out changed modules that are not 2-D weights (norms) instead of saving them whole")
    parser.add_argument("--device", default="cpu", help="torch device for the SVDs, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--max-memory", type=parse_size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                        help="row blocks for reading, copying and measuring errors (default 256MiB); each SVD "
                             "holds one module's delta whole, about 3x its size in float32")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output (only once the new one is complete)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from the tensors it wrote")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from mergehub.extract.options import ExtractOptions
    from mergehub.extract.plan import make_extract_plan
    from mergehub.extract.report import summary
    from mergehub.extract.write import write_adapter
    from mergehub.run.output import check_output

    started = time.perf_counter()
    options = ExtractOptions(rank=args.rank, energy=args.rank_by, include=tuple(args.include),
                             exclude=tuple(args.exclude), embed_lora=args.embed_lora,
                             save_modules=tuple(args.save_modules), sv_epsilon=args.sv_epsilon,
                             distribute_scale=args.distribute_scale, skip_undecomposable=args.skip_undecomposable,
                             device=args.device, max_memory=args.max_memory)
    check_output(args.out, args.force)
    reg = registry()
    with bar("choosing ranks") if not options.fixed_ranks else nullcontext() as advance:
        plan = make_extract_plan(args.model, args.base, options, reg,
                                 progress=(lambda done, total: advance(1, total)) if advance else None)
    try:
        for warning in plan.warnings:
            warn(warning)
        work = sum(t.work for t in plan.tensors)
        with bar("extracting") as advance:
            write_adapter(plan, options, reg, args.out, force=args.force, resume=args.resume,
                          command=" ".join(["mergehub", *map(shlex.quote, sys.argv[1:])]),
                          progress=(lambda spec: advance(spec.work, work)) if advance else None)
    finally:
        plan.close()
    report = summary(plan, options, str(args.out), time.perf_counter() - started)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    return 0


def render(report: dict[str, Any]) -> None:
    from rich.table import Table

    from mergehub.extract.report import HOW, error_text

    table = Table(title=f"LoRA adapter {report['out']}", title_justify="left")
    table.add_column("module", overflow="fold")
    table.add_column("in the adapter")
    table.add_column("shape")
    table.add_column("rank", justify="right")
    table.add_column("relative error", justify="right")
    for row in report["modules"]:
        how = HOW[row["how"]] + (f" ({row['reason']})" if row["reason"] else "")
        table.add_row(row["module"], how, "x".join(map(str, row["shape"] or [])) or "",
                      "" if row["rank"] is None else str(row["rank"]), error_text(row["error"]))
    out.print(table)
    errors = [r["error"] for r in report["modules"] if r["how"] in ("lora", "embedding") and r["error"] is not None]
    err.print(f"[green]extracted[/green] r={report['r']} over {len(errors)} modules (largest relative error "
              f"{max(errors):.4g}), {size(report['bytes'])} into {report['out']} in {report['seconds']:.1f} s")


def size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else \
        f"{nbytes / 1e3:.1f} kB"


@contextmanager
def bar(label: str) -> Iterator[Any]:
    """``advance(amount, total)`` for a rich progress bar on a terminal; None when stderr is not one."""
    if not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as progress:
        task = progress.add_task(label, total=None)

        def advance(amount: int, total: int) -> None:
            progress.update(task, advance=amount, total=total)

        yield advance
