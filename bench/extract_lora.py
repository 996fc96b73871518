#!/usr/bin/env python3
"""Benchmark ``mergehub extract-lora`` against ``mergekit-extract-lora`` on the Llama-3.2-1B-shaped checkpoints.

A rank-64 adapter of fine-tune ``a`` over ``base`` (bench/make_checkpoints.py writes both): ``mergehub
extract-lora --rank 64`` and ``mergekit-extract-lora --max-rank 64``, each in a subprocess, measured as
bench/run.py measures merges: wall time of the whole process, peak private memory (summed RssAnon of the
process tree, sampled every 50 ms) and CPU time. With ``--repeat N`` the tools alternate for N rounds and the
table keeps each one's fastest run and its highest memory peak. ``--compare`` also reads both adapters and
reports the largest absolute difference of every tensor they share, and the tensors only one of them wrote.

    python bench/make_checkpoints.py
    python bench/extract_lora.py [--mergekit /path/to/mergekit-extract-lora] [--rank 64] [--repeat 3] [--compare]

On tiny models, to try the harness itself: ``--models-dir DIR --base NAME --model NAME`` (any two checkpoints of
one family under DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import DEFAULT_WORK, MB, find_mergehub, run_measured, sync  # noqa: E402  (bench/run.py's measurement)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_WORK / "models")
    parser.add_argument("--base", default="base", help="the base model's directory under --models-dir")
    parser.add_argument("--model", default="a", help="the fine-tune's directory under --models-dir")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--mergehub", help="the mergehub executable (default: on PATH or beside this Python)")
    parser.add_argument("--mergekit", help="the mergekit-extract-lora executable (default: on PATH, if any)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--compare", action="store_true", help="compare the two adapters tensor by tensor")
    parser.add_argument("--results", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    base, model = (args.models_dir / args.base).resolve(), (args.models_dir / args.model).resolve()
    for directory in (base, model):
        if not (directory / "config.json").is_file():
            sys.exit(f"{directory}: no checkpoint (run bench/make_checkpoints.py, or pass --models-dir)")
    mergehub = find_mergehub(args.mergehub)
    mergekit = args.mergekit or shutil.which("mergekit-extract-lora")
    work = args.work_dir.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    outs = {"mergehub": work / "extract-mergehub", "mergekit": work / "extract-mergekit"}
    commands = {"mergehub": [mergehub, "extract-lora", "--model", str(model), "--base", str(base), "--out",
                             str(outs["mergehub"]), "--rank", str(args.rank)]}
    if mergekit:  # absolute paths: mergekit's model card asks the Hub about anything that looks like a repo id
        commands["mergekit"] = [mergekit, "--model", str(model), "--base-model", str(base), "--out-path",
                                str(outs["mergekit"]), "--max-rank", str(args.rank)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[tuple[float, float, float, int, float]]] = {name: [] for name in commands}
    for round_ in range(args.repeat):
        order = list(commands) if round_ % 2 == 0 else list(reversed(commands))
        for name in order:
            shutil.rmtree(outs[name], ignore_errors=True)
            sync()
            measured = run_measured(commands[name], logs / f"extract-{name}-{round_}.log", 0.05, env)
            runs[name].append((measured.wall, measured.sampler.peak[1] * 1024 / MB, measured.cpu_user + measured.cpu_sys,
                               measured.returncode, measured.cpu_foreign))
    report = render(runs, args.rank, model, base)
    if args.compare and len(commands) == 2 and all(r[-1][3] == 0 for r in runs.values()):
        report += "\n" + compare(outs["mergekit"], outs["mergehub"])
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
    print(report)
    if args.results:
        args.results.write_text(report)
    return 0 if all(r[3] == 0 for runs_ in runs.values() for r in runs_) else 1


def render(runs: dict[str, list[tuple]], rank: int, model: Path, base: Path) -> str:
    lines = [f"# extract-lora at rank {rank}: {model.name} over {base.name} ({os.cpu_count()} CPUs)", "",
             "| implementation | best wall s | peak private MB | cpu user+sys s | exit | other processes' cpu s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, measured in runs.items():
        best = min(measured, key=lambda r: r[0])
        peak = max(r[1] for r in measured)
        lines.append(f"| {name} | {best[0]:.1f} | {peak:.0f} | {best[2]:.1f} | {max(r[3] for r in measured)} | "
                     f"{best[4]:.1f} |")
    if "mergekit" not in runs:
        lines.append("| mergekit | not available | | | | |")
    return "\n".join(lines) + "\n"


def compare(mergekit: Path, mergehub: Path) -> str:
    """Largest absolute difference per tensor, one tensor in memory at a time."""
    from safetensors import safe_open

    with safe_open(str(mergekit / "adapter_model.safetensors"), "pt") as a, \
            safe_open(str(mergehub / "adapter_model.safetensors"), "pt") as b:
        names_a, names_b = set(a.keys()), set(b.keys())
        worst, where = 0.0, ""
        for name in sorted(names_a & names_b):
            x, y = a.get_tensor(name), b.get_tensor(name)
            diff = float("inf") if x.shape != y.shape else (x.float() - y.float()).abs().max().item()
            if diff > worst or not where:
                worst, where = diff, name
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (mergekit, mergehub)]
    differing = sorted(k for k in set(configs[0]) | set(configs[1]) if k != "target_modules"
                       and configs[0].get(k) != configs[1].get(k))
    if sorted(configs[0].get("target_modules", [])) != sorted(configs[1].get("target_modules", [])):
        differing.append("target_modules")
    return (f"tensors in both: {len(names_a & names_b)}, largest absolute difference {worst:.3g} ({where}); "
            f"only mergekit: {sorted(names_a - names_b) or 'none'}; only mergehub: {sorted(names_b - names_a) or 'none'}; "
            f"adapter_config.json keys that differ: {differing or 'none'}\n")


if __name__ == "__main__":
    sys.exit(main())
