#!/usr/bin/env python3
"""Benchmark mergehub's other tools against mergekit's on the Llama-3.2-1B-shaped checkpoints.

- ``moe``: a 4-expert Mixtral from the synthetic checkpoints (experts a, b, base, a; random gates, so no
  tokenizer is needed), ``mergehub moe`` against ``mergekit-moe``.

Each command runs in a subprocess, measured as bench/run.py measures merges: wall time of the whole
process and peak private memory (summed RssAnon of the process tree, sampled every 50 ms).

    python bench/make_checkpoints.py
    python bench/tools.py --mergekit-bin /path/to/mergekit-venv/bin [--tools moe] [--results FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import DEFAULT_WORK, MB, find_mergehub, run_measured  # noqa: E402  (bench/run.py's measurement)

MOE = """\
base_model: {base}
experts:
  - source_model: {a}
  - source_model: {b}
  - source_model: {base}
  - source_model: {a}
gate_mode: random
experts_per_token: 2
dtype: bfloat16
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tools", default="moe", help="comma-separated: moe")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--mergekit-bin", type=Path, default=None, help="the bin directory holding mergekit's commands")
    parser.add_argument("--results", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    mergehub = find_mergehub(None)
    models = args.work_dir / "models"
    out, logs = args.work_dir / "tools-out", args.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for tool in args.tools.split(","):
        for name, command in commands(tool, mergehub, args.mergekit_bin, models, args.work_dir, out):
            shutil.rmtree(out, ignore_errors=True)
            measured = run_measured(command, logs / f"tools-{tool}-{name}.log", 0.05)
            peak = measured.sampler.peak[1] * 1024 / MB
            rows.append((tool, name, measured.wall, peak, measured.cpu_user + measured.cpu_sys, measured.returncode,
                         measured.cpu_foreign))
        shutil.rmtree(out, ignore_errors=True)
    report = render(rows)
    print(report)
    if args.results:
        args.results.write_text(report)
    return 0


def commands(tool: str, mergehub: str, mergekit_bin: Path | None, models: Path, work: Path,
             out: Path) -> list[tuple[str, list[str]]]:
    recipe = work / "recipes" / f"tools-{tool}.yml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    if tool != "moe":
        raise SystemExit(f"unknown tool {tool}")
    recipe.write_text(MOE.format(**{m: models / m for m in ("a", "b", "base")}))
    found = [("mergehub", [mergehub, "moe", str(recipe), "--out", str(out), "--seed", "1"])]
    if mergekit_bin is not None:
        found.append(("mergekit", [str(mergekit_bin / "mergekit-moe"), str(recipe), str(out),
                                   "--i-understand-this-is-not-useful-without-training"]))
    return found


def render(rows: list[tuple]) -> str:
    lines = [f"# mergehub tools vs mergekit ({os.cpu_count()} CPUs)", "",
             "| tool | implementation | wall s | peak private MB | cpu user+sys s | exit | other processes' cpu s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {t} | {n} | {w:.1f} | {p:.0f} | {c:.1f} | {r} | {f:.1f} |" for t, n, w, p, c, r, f in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
