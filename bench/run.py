#!/usr/bin/env python3
"""Benchmark ``mergehub merge`` (and ``mergekit-yaml`` when available) on real-sized checkpoints.

For each recipe: wall time of the CLI in a subprocess, peak private memory (the summed
``RssAnon`` of the process and all its descendants, sampled every 50 ms), and the I/O
floor (read every input file once from a warm page cache + write the output's size with
fsync). Results go to stdout and to ``bench/results.md``.

    python bench/make_checkpoints.py
    python bench/run.py [--recipes linear,passthrough] [--models-dir DIR] [--mergekit PATH]

See bench/README.md.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_WORK = Path("/tmp/mergehub-bench")
MB = 1024 * 1024  # "MB" in the table is MiB, like /proc's kB are KiB

RECIPES = {
    "linear": {
        "models": ["a", "b"],
        "text": """\
merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5}}
dtype: bfloat16
""",
        "what": "linear a+b, weights 0.5/0.5, dtype bfloat16 (16 layers out)",
    },
    "passthrough": {
        "models": ["a", "b"],
        "text": """\
merge_method: passthrough
slices:
  - sources:
      - model: {a}
        layer_range: [0, 12]
  - sources:
      - model: {b}
        layer_range: [4, 16]
dtype: bfloat16
""",
        "what": "passthrough a[0,12] + b[4,16] (24 layers out)",
    },
    "ties": {
        "models": ["base", "a", "b"],
        "text": """\
merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
dtype: bfloat16
""",
        "what": "ties base + a + b, density 0.5, dtype bfloat16",
    },
    "dare_ties": {
        "models": ["base", "a", "b"],
        "text": """\
merge_method: dare_ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5, density: 0.5}}
dtype: bfloat16
""",
        "what": "dare_ties base + a + b, density 0.5, dtype bfloat16",
    },
    "slerp": {
        "models": ["a", "b"],
        "text": """\
merge_method: slerp
base_model: {a}
slices:
  - sources:
      - {{model: {a}, layer_range: [0, 16]}}
      - {{model: {b}, layer_range: [0, 16]}}
parameters:
  t:
    - {{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}}
    - {{filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}}
    - {{value: 0.5}}
dtype: bfloat16
""",
        "what": "slerp a/b, gradient filters on attention and MLP, dtype bfloat16",
    },
    "model_stock": {
        "models": ["base", "a", "b"],
        "text": """\
merge_method: model_stock
base_model: {base}
models:
  - model: {a}
  - model: {b}
dtype: bfloat16
""",
        "what": "model_stock base + a + b, dtype bfloat16",
    },
}

def _base_and_two(method: str, params: str = "", shared: str = "", what: str = "") -> dict:
    """A recipe merging a and b onto base with ``method``; ``params`` go on each model, ``shared`` at the top."""
    models = "".join(f"  - model: {{{m}}}\n" + (f"    parameters: {{{{{params}}}}}\n" if params else "") for m in ("a", "b"))
    top = f"parameters: {{{{{shared}}}}}\n" if shared else ""
    return {"models": ["base", "a", "b"],
            "text": f"merge_method: {method}\nbase_model: {{base}}\nmodels:\n{models}{top}dtype: bfloat16\n",
            "what": f"{method} base + a + b{', ' + what if what else ''}, dtype bfloat16"}


RECIPES.update({
    "task_arithmetic": _base_and_two("task_arithmetic", "weight: 0.5"),
    "dare_linear": _base_and_two("dare_linear", "weight: 0.5, density: 0.5", what="density 0.5"),
    "breadcrumbs": _base_and_two("breadcrumbs", "weight: 0.5, density: 0.9, gamma: 0.01", what="density 0.9, gamma 0.01"),
    "breadcrumbs_ties": _base_and_two("breadcrumbs_ties", "weight: 0.5, density: 0.9, gamma: 0.01",
                                      what="density 0.9, gamma 0.01"),
    "della": _base_and_two("della", "weight: 0.5, density: 0.5, epsilon: 0.1", what="density 0.5, epsilon 0.1"),
    "della_linear": _base_and_two("della_linear", "weight: 0.5, density: 0.5, epsilon: 0.1",
                                  what="density 0.5, epsilon 0.1"),
    "sce": _base_and_two("sce", shared="select_topk: 0.5", what="select_topk 0.5"),
    "nuslerp": _base_and_two("nuslerp", "weight: 0.5", what="weights 0.5/0.5 on task vectors"),
    "multislerp": _base_and_two("multislerp", "weight: 0.5", what="weights 0.5/0.5 on task vectors"),
    "karcher": {"models": ["a", "b"], "what": "karcher mean of a and b, dtype bfloat16",
                "text": "merge_method: karcher\nmodels:\n  - model: {a}\n  - model: {b}\ndtype: bfloat16\n"},
    "nearswap": {"models": ["a", "b"], "what": "nearswap a towards b, t 0.001, dtype bfloat16",
                 "text": "merge_method: nearswap\nbase_model: {a}\nmodels:\n  - model: {b}\n"
                         "parameters: {{t: 0.001}}\ndtype: bfloat16\n"},
    "arcee_fusion": {"models": ["a", "b"], "what": "arcee_fusion of b onto a, dtype bfloat16",
                     "text": "merge_method: arcee_fusion\nbase_model: {a}\nmodels:\n  - model: {b}\n"
                             "dtype: bfloat16\n"},
})

#: Issue 15's targets, for every recipe: wall ≤ FLOOR_BOUND × the I/O floor (2× for the methods that are
#: little more than reading and writing, 3× for the others), at least MERGEKIT_SPEEDUP× faster than mergekit,
#: and peak private memory ≤ MEMORY_MB (the default --max-memory).
NEAR_FLOOR = {"linear", "passthrough", "task_arithmetic", "nearswap", "slerp", "nuslerp", "multislerp", "karcher",
              "model_stock"}
MERGEKIT_SPEEDUP = 2
MEMORY_MB = 256


def floor_bound(name: str) -> float:
    """How many times the I/O floor a recipe's wall time may be."""
    return 2 if name in NEAR_FLOOR else 3


# Runs mergehub's CLI in-process with TensorComputer.compute wrapped to log when each output tensor starts
# and ends, so that the memory samples can be attributed to tensors (only with --attribute).
TRACE_WRAPPER = """\
import json, os, sys, time
from mergehub.run import compute as executor
log = open(os.environ["MERGEHUB_BENCH_TRACE"], "w", buffering=1)
original = executor.TensorComputer.compute
def record(spec, start, busy):
    log.write(json.dumps([spec.name, start, time.monotonic(), spec.nbytes, busy]) + "\\n")
def compute(self, spec):
    start = time.monotonic()
    result = original(self, spec)
    if not hasattr(result, "__next__"):  # an executor whose compute returns the tensor
        record(spec, start, time.monotonic() - start)
        return result
    def blocks():  # an executor whose compute yields row blocks: time spent inside it, not waiting for writes
        busy, it = time.monotonic() - start, iter(result)
        while True:
            t = time.monotonic()
            try:
                block = next(it)
            except StopIteration:
                break
            busy += time.monotonic() - t
            yield block
        busy += time.monotonic() - t
        record(spec, start, busy)
    return blocks()
executor.TensorComputer.compute = compute
from mergehub.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


# -- memory sampling ---------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # fields after "(comm)": state ppid …
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def _status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    values = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


class Sampler(threading.Thread):
    """Samples the summed RssAnon (and RssFile, for information) of a process tree."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, RssAnon KiB, RssFile KiB)
        self.stopping = threading.Event()
        self.started = 0.0  # monotonic time the process was started

    def run(self) -> None:
        while not self.stopping.is_set():
            anon = file = 0
            for pid in _tree(self.root):
                values = _status_kb(pid, ("RssAnon", "RssFile"))
                anon += values["RssAnon"]
                file += values["RssFile"]
            self.samples.append((time.monotonic(), anon, file))
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    @property
    def peak(self) -> tuple[float, int, int]:
        return max(self.samples, key=lambda s: s[1]) if self.samples else (0.0, 0, 0)


# -- runs --------------------------------------------------------------------------------------
@dataclass
class Run:
    recipe: str
    tool: str
    wall: float
    peak_anon_kb: int
    peak_file_kb: int
    peak_at: float  # seconds after start
    returncode: int
    log: Path
    output_bytes: int = 0
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    cpu_foreign: float = 0.0
    sync_after: float = 0.0  # seconds a `sync` took right after the run: output bytes the tool left unflushed
    walls: list[float] = field(default_factory=list)  # every run, when repeated
    cpus: list[float] = field(default_factory=list)  # user+sys of every run
    attribution: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return self.peak_anon_kb * 1024 / MB


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (user, nice, system, irq, softirq), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    wall: float
    returncode: int
    sampler: Sampler
    cpu_user: float  # of the measured process (and the children it waited for)
    cpu_sys: float
    cpu_foreign: float  # busy CPU time of everything else on the machine during the run (other users' jobs)


def run_measured(cmd: list[str], log: Path, interval: float, env: dict[str, str] | None = None) -> Measurement:
    with open(log, "wb") as out:
        busy_before, self_before = _busy_cpu_seconds(), sum(os.times()[:2])
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        sampler = Sampler(proc.pid, interval)
        sampler.started = started
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        busy = _busy_cpu_seconds() - busy_before
        own = sum(os.times()[:2]) - self_before  # this harness, mostly the sampler
    with open(log.with_suffix(".mem.tsv"), "w") as f:  # the memory timeline, for plotting or a closer look
        f.write("seconds\trss_anon_kib\trss_file_kib\n")
        f.writelines(f"{t - started:.3f}\t{anon}\t{file}\n" for t, anon, file in sampler.samples)
    foreign = max(0.0, busy - usage.ru_utime - usage.ru_stime - own)
    return Measurement(wall, proc.returncode, sampler, usage.ru_utime, usage.ru_stime, foreign)


def output_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) if directory.is_dir() else 0


def sync() -> None:
    subprocess.run(["sync"], check=False)


def cat_all(files: list[Path]) -> float:
    started = time.monotonic()
    for f in files:
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - started


def write_floor(directory: Path, nbytes: int) -> float:
    """Time to write ``nbytes`` into a new file in ``directory`` and fsync it.

    Random bytes, not zeros: some virtual disks treat zero blocks specially, and model weights are not zeros.
    """
    scratch = directory / ".mergehub-bench-iofloor"  # a new directory, as the tools write into one
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    target = scratch / "model.safetensors"
    block = os.urandom(16 * MB)
    sync()
    started = time.monotonic()
    with open(target, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(left, len(block))
            f.write(memoryview(block)[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    seconds = time.monotonic() - started
    shutil.rmtree(scratch)
    return seconds


def input_files(models: list[Path]) -> list[Path]:
    files: list[Path] = []
    for m in models:
        files += sorted(m.glob("*.safetensors"))
    return files


def attribute(sampler: Sampler, trace: Path, top: int = 3) -> list[str]:
    """Which output tensor was in flight at the highest memory samples."""
    rows = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    starts = [r[1] for r in rows]
    seen: dict[str, int] = {}
    for t, anon, _ in sorted(sampler.samples, key=lambda s: -s[1]):
        i = bisect.bisect_right(starts, t) - 1
        name = rows[i][0] if i >= 0 else "(startup/planning)"
        if t > rows[-1][2]:
            name = "(after the last tensor: config, card, rename)"
        if name not in seen:
            seen[name] = anon
        if len(seen) >= top:
            break
    slowest = sorted(rows, key=lambda r: -r[4])[:top]
    lines = [f"{name}: {kb / 1024:.0f} MB" for name, kb in seen.items()]
    end = sampler.samples[-1][0] if sampler.samples else rows[-1][2]
    lines.append(f"phases: start-up and planning {rows[0][1] - sampler.started:.1f} s; {len(rows)} tensors "
                 f"{rows[-1][2] - rows[0][1]:.1f} s, of which inside TensorComputer.compute {sum(r[4] for r in rows):.1f} s "
                 f"(the rest is mostly writing); after the last compute {end - rows[-1][2]:.1f} s (last write, fsync, "
                 "config, card, rename, exit)")
    lines.append("slowest tensors (compute): " + ", ".join(f"{r[0]} {r[4]:.2f} s" for r in slowest))
    return lines


# -- main --------------------------------------------------------------------------------------
def find_mergehub(given: str | None) -> str:
    if given:
        return given
    beside = Path(sys.executable).parent / "mergehub"
    found = shutil.which("mergehub") or (str(beside) if beside.exists() else None)
    if not found:
        sys.exit("mergehub: not found on PATH nor beside this Python; pass --mergehub PATH")
    return found


def find_mergekit(given: str | None) -> str | None:
    if given:
        if not (Path(given).is_file() and os.access(given, os.X_OK)) and not shutil.which(given):
            sys.exit(f"--mergekit {given}: not an executable")
        return shutil.which(given) or given
    return shutil.which("mergekit-yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="linear,passthrough", help=f"comma-separated, from {', '.join(RECIPES)}; or all")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_WORK / "models", help="where make_checkpoints.py wrote base, a, b")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="recipes, outputs and logs go under here (outside the repo)")
    parser.add_argument("--mergehub", help="the mergehub executable (default: on PATH or beside this Python)")
    parser.add_argument("--mergekit", help="the mergekit-yaml executable (default: mergekit-yaml on PATH, if any)")
    parser.add_argument("--mergehub-args", default="", help="extra arguments for mergehub merge, e.g. '--max-memory 64MiB'")
    parser.add_argument("--mergekit-args", default="", help="extra arguments for mergekit-yaml, e.g. '--lazy-unpickle'")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set an environment variable for the tools' runs, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per recipe; the table shows the best wall time (and the median), and the highest peak")
    parser.add_argument("--interval", type=float, default=0.05, help="memory sampling interval in seconds (default 0.05)")
    parser.add_argument("--attribute", action="store_true",
                        help="one extra traced mergehub run per recipe, to tell which tensor is in flight at the memory peak")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the last merged models (default: delete them)")
    parser.add_argument("--results", type=Path, default=HERE / "results.md", help="markdown output (default bench/results.md)")
    args = parser.parse_args(argv)

    names = list(RECIPES) if args.recipes == "all" else [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    bad = [e for e in args.env if "=" not in e]
    if bad:
        parser.error(f"--env takes NAME=VALUE, got {bad}")
    tool_env = dict(os.environ, **dict(e.split("=", 1) for e in args.env)) if args.env else None
    work = args.work_dir.resolve()
    if work == REPO or REPO in work.parents:
        parser.error(f"--work-dir {work} is inside the repository; use a directory outside it")
    models_dir = args.models_dir.resolve()
    mergehub = find_mergehub(args.mergehub)
    mergekit = find_mergekit(args.mergekit)
    (work / "recipes").mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    args.code_version = _code_version()  # read at the start: the tree may change while the benchmark runs
    print(f"mergehub: {mergehub} ({args.code_version})")
    print(f"mergekit: {mergekit}" if mergekit else "mergekit: not available")

    runs: list[Run] = []
    floors: dict[str, tuple[float, float, int, int]] = {}  # recipe -> (read s, write s, read bytes, write bytes)
    floor_runs: dict[str, list[tuple[float, float]]] = {}
    for name in names:
        recipe = RECIPES[name]
        model_dirs = [models_dir / m for m in recipe["models"]]
        missing = [str(m) for m in model_dirs if not (m / "model.safetensors").is_file()]
        if missing:
            sys.exit(f"missing checkpoints {missing}: run bench/make_checkpoints.py --out {models_dir} first")
        config = work / "recipes" / f"{name}.yml"
        config.write_text(recipe["text"].format(**{m: str(models_dir / m) for m in recipe["models"]}))
        files = input_files(model_dirs)
        read_bytes = sum(f.stat().st_size for f in files)
        print(f"\n== {name}: {recipe['what']}", flush=True)
        cat_all(files)  # warm-up: the page cache holds the inputs from here on

        out_of = {"mergehub": work / "out" / f"{name}-mergehub", "mergekit": work / "out" / f"{name}-mergekit"}
        tools = [("mergehub", [mergehub, "merge", str(config), "--out", str(out_of["mergehub"]), "--force",
                                 *args.mergehub_args.split()])]
        if mergekit:
            tools.append(("mergekit", [mergekit, str(config), str(out_of["mergekit"]), *args.mergekit_args.split()]))
        tool_runs: dict[str, list[Run]] = {tool: [] for tool, _ in tools}
        floor_runs[name] = []
        for i in range(args.repeat):  # rounds: every tool once, then the I/O floor, so that noise spreads evenly
            for tool, cmd in (tools if i % 2 == 0 else tools[::-1]):  # alternate who goes first
                shutil.rmtree(out_of[tool], ignore_errors=True)
                sync()
                cat_all(files)
                log = work / "logs" / f"{name}-{tool}-{i + 1}.log"
                m = run_measured(cmd, log, args.interval, tool_env)
                sync_started = time.monotonic()
                sync()
                sync_after = time.monotonic() - sync_started
                peak_t, anon, file = m.sampler.peak
                run = Run(name, tool, m.wall, anon, file, peak_t - m.sampler.started, m.returncode, log,
                          output_size(out_of[tool]), m.cpu_user, m.cpu_sys, m.cpu_foreign, sync_after)
                status = "ok" if m.returncode == 0 else f"FAILED (exit {m.returncode}), see {log}"
                print(f"  {tool} run {i + 1}: {m.wall:.1f} s + sync {sync_after:.1f} s (cpu user {m.cpu_user:.1f} s, sys {m.cpu_sys:.1f} s; "
                      f"other processes {m.cpu_foreign:.1f} cpu-s), peak RssAnon {run.peak_mb:.0f} MB at {run.peak_at:.1f} s "
                      f"(RssFile then {file / 1024:.0f} MB), output {run.output_bytes / 1e9:.2f} GB: {status}", flush=True)
                if m.returncode != 0:
                    sys.stdout.write(log.read_text(errors="replace")[-3000:])
                tool_runs[tool].append(run)
            out_bytes = next((r.output_bytes for rs in tool_runs.values() for r in rs if r.output_bytes), 0)
            if not out_bytes:
                sys.exit(f"{name}: no tool produced an output; cannot measure the write floor")
            # The floor is measured before the outputs are deleted: on a disk mounted with `discard`, writes
            # right after a big delete are slowed by the discards it sends (see README.md).
            sync()
            cat_all(files)
            read_s = cat_all(files)
            write_s = write_floor(work / "out", out_bytes)
            floor_runs[name].append((read_s, write_s))
            print(f"  I/O floor {i + 1}: read {read_bytes / 1e9:.2f} GB in {read_s:.2f} s (warm) + "
                  f"write {out_bytes / 1e9:.2f} GB with fsync in {write_s:.2f} s = {read_s + write_s:.2f} s", flush=True)
            if not (args.keep_outputs and i == args.repeat - 1):
                for directory in out_of.values():  # free the disk space and page cache the outputs hold
                    shutil.rmtree(directory, ignore_errors=True)
        runs += [_summarise(rs) for rs in tool_runs.values()]
        read_s = min(r for r, _ in floor_runs[name])
        write_s = min(w for _, w in floor_runs[name])
        floors[name] = (read_s, write_s, read_bytes, out_bytes)
        if args.attribute:
            trace = work / "logs" / f"{name}-mergehub-trace.jsonl"
            shutil.rmtree(out_of["mergehub"], ignore_errors=True)
            sync()
            env = dict(tool_env or os.environ, MERGEHUB_BENCH_TRACE=str(trace))
            cmd = [sys.executable, "-c", TRACE_WRAPPER, "merge", str(config), "--out", str(out_of["mergehub"]), "--force"]
            m = run_measured(cmd, work / "logs" / f"{name}-mergehub-trace.log", args.interval, env)
            lines = attribute(m.sampler, trace) if m.returncode == 0 else [f"traced run failed (exit {m.returncode})"]
            next(r for r in runs if r.recipe == name and r.tool == "mergehub").attribution = lines
            print(f"  traced mergehub run ({m.wall:.1f} s); highest memory while computing:", flush=True)
            for line in lines:
                print(f"    {line}", flush=True)
        if not args.keep_outputs:
            for directory in out_of.values():
                shutil.rmtree(directory, ignore_errors=True)

    report = render(runs, floors, floor_runs, names, mergekit, args)
    print("\n" + report)
    args.results.write_text(report)
    print(f"(written to {args.results})")
    return 0 if all(r.returncode == 0 for r in runs) else 1


def _summarise(tool_runs: list[Run]) -> Run:
    """The fastest run (interference only ever adds time), with the highest memory peak of all runs."""
    best = min(tool_runs, key=lambda r: r.wall)
    peak = max(tool_runs, key=lambda r: r.peak_anon_kb)
    return Run(best.recipe, best.tool, best.wall, peak.peak_anon_kb, peak.peak_file_kb, peak.peak_at,
               max(r.returncode for r in tool_runs), best.log, best.output_bytes, best.cpu_user, best.cpu_sys,
               best.cpu_foreign, best.sync_after, [r.wall for r in tool_runs], [r.cpu_user + r.cpu_sys for r in tool_runs])


def _machine() -> str:
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "?"
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    return (f"{os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Python {platform.python_version()}, torch {torch_version}, "
            f"{platform.system()} {platform.release()}")


def _code_version() -> str:
    """The commit of the mergehub being measured (the repo this harness lives in), and whether it has local changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cd", "--date=format:%Y-%m-%d %H:%M"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "mergehub: unknown commit"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"mergehub at {head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def render(runs: list[Run], floors: dict, floor_runs: dict, names: list[str], mergekit: str | None,
           args: argparse.Namespace) -> str:
    lines = ["# mergehub benchmark results", "",
             f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · {_machine()}", "",
             args.code_version + (f"; tools run with {' '.join(args.env)}" if args.env else "")
             + (f"; mergehub run with `{args.mergehub_args}`" if args.mergehub_args else ""), "",
             "Synthetic Llama-3.2-1B-shaped bf16 checkpoints (2.47 GB each, tied embeddings), written by "
             "`bench/make_checkpoints.py`; page cache warm. Wall time of the whole CLI process; peak private memory "
             f"is the highest summed RssAnon of the process tree, sampled every {args.interval * 1000:.0f} ms; "
             "I/O floor = warm read of every input file (`cat`) + write of the output's size (random bytes) with fsync. "
             "The last column is CPU time used by *other* processes while the tool ran (from /proc/stat): "
             "on 2 cores, anything sizeable there slows the tool down. CPU time (user+sys of the tool) is less "
             "sensitive to that than wall time."
             + (f" Best of {args.repeat} rounds for wall time and for each half of the floor (CPU columns: "
                f"from that fastest run); peak memory: highest of all runs." if args.repeat > 1 else ""), "",
             "| recipe | tool | wall s | median wall s | peak private MB | I/O floor s | ratio to I/O floor "
             "| cpu user+sys s | median cpu s | other processes' cpu s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        read_s, write_s, _, _ = floors.get(run.recipe, (0, 0, 0, 0))
        floor = read_s + write_s
        wall = f"{run.wall:.1f}" if run.returncode == 0 else f"failed ({run.returncode})"
        ratio = f"{run.wall / floor:.2f}×" if floor and run.returncode == 0 else "–"
        lines.append(f"| {run.recipe} | {run.tool} | {wall} | {statistics.median(run.walls):.1f} | {run.peak_mb:.0f} | "
                     f"{floor:.1f} | {ratio} | {run.cpu_user:.1f}+{run.cpu_sys:.1f} | {statistics.median(run.cpus):.1f} | "
                     f"{run.cpu_foreign:.1f} |")
    busy = [r for r in runs if r.wall and r.cpu_foreign / r.wall > 0.2]
    if busy:
        lines += ["", "**Warning:** other processes kept the machine busy during " + ", ".join(f"{r.recipe}/{r.tool}" for r in busy)
                  + " (the last column, CPU-seconds they used while the tool ran); wall times there are inflated."]
    lines += ["", "I/O floor detail" + (" (best of the rounds)" if args.repeat > 1 else "") + ":", ""]
    for name in names:
        if name in floors:
            read_s, write_s, rb, wb = floors[name]
            every = floor_runs.get(name, [])
            rounds = (f" (rounds: read {', '.join(f'{r:.2f}' for r, _ in every)} s; "
                      f"write {', '.join(f'{w:.2f}' for _, w in every)} s)") if len(every) > 1 else ""
            lines.append(f"- {name}: read {rb / 1e9:.2f} GB in {read_s:.2f} s + write {wb / 1e9:.2f} GB (fsync) "
                         f"in {write_s:.2f} s = {read_s + write_s:.2f} s{rounds}")
    lines.append("")
    if mergekit:
        lines += ["mergehub relative to mergekit (`" + mergekit + "`):", "",
                  "| recipe | wall mergehub/mergekit | (wall + sync) mergehub/mergekit | median cpu mergehub/mergekit "
                  "| peak memory mergehub/mergekit |",
                  "|---|---:|---:|---:|---:|"]
        for name in names:
            hub = next((r for r in runs if r.recipe == name and r.tool == "mergehub"), None)
            kit = next((r for r in runs if r.recipe == name and r.tool == "mergekit"), None)
            if hub and kit and hub.returncode == 0 and kit.returncode == 0:
                synced = (hub.wall + hub.sync_after) / (kit.wall + kit.sync_after)
                cpu = statistics.median(hub.cpus) / max(statistics.median(kit.cpus), 1e-9)
                lines.append(f"| {name} | {hub.wall / kit.wall:.2f}× | {synced:.2f}× | {cpu:.2f}× | "
                             f"{hub.peak_anon_kb / max(kit.peak_anon_kb, 1):.2f}× |")
            else:
                lines.append(f"| {name} | – | – | – | – |")
        lines.append("")
    else:
        lines += ["mergekit: not available", ""]
    lines += _targets(runs, floors, names)
    details = []
    for run in runs:
        walls = (f" (runs: {', '.join(f'{w:.1f}' for w in run.walls)} s; median {statistics.median(run.walls):.1f} s)"
                 if len(run.walls) > 1 else "")
        details.append(f"- {run.recipe} / {run.tool}: best wall {run.wall:.1f} s{walls}, then `sync` {run.sync_after:.1f} s; cpu user {run.cpu_user:.1f} s + "
                       f"sys {run.cpu_sys:.1f} s; other processes on the machine used {run.cpu_foreign:.1f} cpu-s meanwhile; "
                       f"memory peak at {run.peak_at:.1f} s (RssFile then {run.peak_file_kb / 1024:.0f} MB); "
                       f"output {run.output_bytes / 1e9:.2f} GB")
        for line in run.attribution:
            details.append(f"  - {line}")
    lines += ["Details:", "", *details, ""]
    return "\n".join(lines)


def _targets(runs: list[Run], floors: dict, names: list[str]) -> list[str]:
    """Issue 15's targets, each with the measured figure and whether this run met it."""
    lines = ["Targets:", "", "| recipe | target | measured | met |", "|---|---|---:|---|"]
    for name in names:
        hub = next((r for r in runs if r.recipe == name and r.tool == "mergehub" and r.returncode == 0), None)
        kit = next((r for r in runs if r.recipe == name and r.tool == "mergekit" and r.returncode == 0), None)
        floor, bound = sum(floors.get(name, (0, 0))[:2]), floor_bound(name)
        ratio = hub.wall / floor if hub and floor else None
        speedup = kit.wall / hub.wall if hub and kit else None
        checks: list[tuple[str, str, bool | None]] = [
            (f"wall ≤ {bound}× I/O floor", f"{ratio:.2f}×" if ratio else "–", ratio <= bound if ratio else None),
            (f"≥ {MERGEKIT_SPEEDUP}× faster than mergekit", f"{speedup:.1f}×" if speedup else "–",
             speedup >= MERGEKIT_SPEEDUP if speedup else None)]
        if hub:
            checks.append((f"peak private ≤ {MEMORY_MB} MB", f"{hub.peak_mb:.0f} MB", hub.peak_mb <= MEMORY_MB))
        for target, measured, met in checks:
            lines.append(f"| {name} | {target} | {measured} | {'yes' if met else 'no' if met is False else '–'} |")
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())
