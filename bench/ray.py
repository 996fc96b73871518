#!/usr/bin/env python3
"""Benchmark the ray executor against the local one on the Llama-3.2-1B-shaped checkpoints.

For each recipe, the same ``mergehub merge`` runs with the local executor and with ``--executor ray`` on a
Ray cluster started here (a head without CPUs plus 1, then 2 one-CPU worker nodes, real raylets on this
machine); the outputs are compared byte for byte. Wall time is the whole CLI process, Ray's connection
and worker start-up included. On one 2-core machine this measures the executor's overhead and how the
shards spread, not a cluster's bandwidth: see the closing lines of the report for the bound on N nodes.

    python bench/make_checkpoints.py
    python bench/ray.py [--recipes linear,ties] [--shard-size 500MB] [--results bench/ray-results.md]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import DEFAULT_WORK, RECIPES, find_mergehub  # noqa: E402  (the recipes of bench/run.py)

STORE = 200 * 1024**2  # object store per node: only the plan and progress messages go through it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="linear,ties", help="comma-separated names from bench/run.py")
    parser.add_argument("--shard-size", default="500MB", help="output shard size: the unit of work of a Ray task")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--workers", default="1,2", help="worker-node counts to measure")
    parser.add_argument("--results", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    mergehub = find_mergehub(None)
    models = args.work_dir / "models"
    out = args.work_dir / "ray-out"
    rows = []
    for name in args.recipes.split(","):
        recipe = args.work_dir / "recipes" / f"ray-{name}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(RECIPES[name]["text"].format(**{m: models / m for m in ("a", "b", "base")}))
        local = timed([mergehub, "merge", str(recipe), "--out", str(out / "local"), "--force", "--shard-size",
                       args.shard_size])
        rows.append((name, "local", "-", local, shards(out / "local"), "reference"))
        for count in (int(c) for c in args.workers.split(",")):
            seconds = run_on_cluster(mergehub, recipe, out / f"ray{count}", count, args.shard_size)
            same = all(filecmp.cmp(p, out / "local" / p.name, shallow=False) for p in (out / f"ray{count}").glob("*.safetensors"))
            rows.append((name, "ray", str(count), seconds, shards(out / f"ray{count}"), "yes" if same else "NO"))
            shutil.rmtree(out / f"ray{count}", ignore_errors=True)
        shutil.rmtree(out / "local", ignore_errors=True)
    report = render(rows, args.shard_size)
    print(report)
    if args.results:
        args.results.write_text(report)
    return 0


def run_on_cluster(mergehub: str, recipe: Path, out: Path, workers: int, shard_size: str) -> float:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": STORE})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        return timed([mergehub, "merge", str(recipe), "--out", str(out), "--force", "--shard-size", shard_size,
                      "--executor", "ray", "--ray-address", cluster.address])
    finally:
        cluster.shutdown()


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr}")
    return time.perf_counter() - started


def shards(directory: Path) -> int:
    return len(list(directory.glob("*.safetensors")))


def render(rows: list[tuple], shard_size: str) -> str:
    cores = os.cpu_count()
    lines = [f"# ray executor vs local ({cores} CPUs, shard size {shard_size})", "",
             "| recipe | executor | worker nodes | wall s | shards | same bytes as local |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]} | {r[5]} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
