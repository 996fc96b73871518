"""The ray executor on a real local cluster (head + two worker nodes, see conftest.py), through the real CLI.

Every output is compared byte for byte with the local executor's output of the same recipe and options:
for linear, ties, dare_ties (seeded), slerp and a multi-stage recipe, with shards and row blocks small
enough that every merge has several shards spread over both workers. A worker killed mid-shard is
retried; a driver killed (or interrupted) mid-run leaves its finished shards, which --resume keeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mergehub.testing import forward_pass, populate_hub_cache, run_cli

SMALL = ("--shard-size", "8KB", "--max-memory", "4KB")  # several shards, and tensors merged in row blocks
SHARDS = ("--shard-size", "8KB")  # for the slow method, which pauses per call: whole tensors

RECIPES = {
    "linear": "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.3}}\n"
              "  - model: {b}\n    parameters: {{weight: 0.7}}\ndtype: bfloat16\n",
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
            "  - model: {b}\n    parameters: {{weight: 0.4, density: 0.7}}\ndtype: float32\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: {base}\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5, density: 0.4}}\n"
                 "  - model: {b}\n    parameters: {{weight: 0.5, density: 0.6}}\nparameters: {{rescale: true}}\ndtype: float32\n",
    "slerp": "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
             "parameters:\n  t: [0, 0.3, 0.8, 1]\ndtype: float32\n",
}


@pytest.fixture(scope="module")
def models(tiny_models) -> dict[str, Path]:
    return {name: tiny_models(name, seed=seed, layers=4) for name, seed in (("base", 0), ("a", 1), ("b", 2))}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def same_files(left: Path, right: Path) -> None:
    """The two model directories hold the same weight files with the same bytes (and the same index)."""
    names = sorted(p.name for p in left.iterdir() if p.suffix == ".safetensors" or p.name.endswith(".index.json"))
    assert len(names) > 2, names  # several shards, or the test proves little
    assert names == sorted(p.name for p in right.iterdir() if p.suffix == ".safetensors" or p.name.endswith(".index.json"))
    for name in names:
        assert (left / name).read_bytes() == (right / name).read_bytes(), name


def ray_merge(recipe: Path, out: Path, cluster: dict, *extra: str, sizes: tuple[str, ...] = SMALL,
              env: dict[str, str] | None = None):
    env = {**cluster["driver"], **(env or {})}
    return run_cli("merge", recipe, "--out", out, "--executor", "ray", "--ray-address", cluster["address"], *sizes,
                   *extra, env=env)


def local_merge(recipe: Path, out: Path, cluster: dict, *extra: str, sizes: tuple[str, ...] = SMALL,
                env: dict[str, str] | None = None):
    env = {**cluster["driver"], **(env or {})}
    result = run_cli("merge", recipe, "--out", out, *sizes, *extra, env=env)
    assert result.returncode == 0, result.output
    return result


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_the_ray_executor_writes_the_local_executors_bytes(method, models, ray_cluster, tmp_path):
    recipe = write(tmp_path / f"{method}.yaml", RECIPES[method].format(**{k: str(v) for k, v in models.items()}))
    result = ray_merge(recipe, tmp_path / "ray", ray_cluster, "--seed", "7")
    assert result.returncode == 0, result.output
    local_merge(recipe, tmp_path / "local", ray_cluster, "--seed", "7")
    same_files(tmp_path / "ray", tmp_path / "local")
    assert forward_pass(tmp_path / "ray") is not None
    assert not list(tmp_path.glob(".*mergehub-partial"))


def test_a_multi_stage_recipe_runs_stage_by_stage_on_the_cluster(models, ray_cluster, tmp_path):
    text = textwrap.dedent(f"""\
        name: soup
        merge_method: linear
        models:
          - {{model: {models['a']}, parameters: {{weight: 0.5}}}}
          - {{model: {models['b']}, parameters: {{weight: 0.5}}}}
        dtype: float32
        ---
        name: sparse
        merge_method: dare_ties
        base_model: {models['base']}
        models:
          - {{model: soup, parameters: {{weight: 1.0, density: 0.5}}}}
          - {{model: {models['a']}, parameters: {{weight: 0.5, density: 0.5}}}}
        dtype: float32
        ---
        merge_method: slerp
        base_model: sparse
        models:
          - model: sparse
          - model: soup
        parameters: {{t: 0.4}}
        dtype: float32
        """)
    recipe = write(tmp_path / "stages.yaml", text)
    result = ray_merge(recipe, tmp_path / "ray", ray_cluster, "--seed", "3", "--intermediate-dir", tmp_path / "ray-stages")
    assert result.returncode == 0, result.output
    assert "stage soup" in result.flat and "stage sparse" in result.flat, result.output
    local_merge(recipe, tmp_path / "local", ray_cluster, "--seed", "3", "--intermediate-dir", tmp_path / "local-stages")
    same_files(tmp_path / "ray", tmp_path / "local")
    for stage in ("soup", "sparse"):
        same_files(tmp_path / "ray-stages" / stage, tmp_path / "local-stages" / stage)


def slow_recipe(tmp_path: Path, models: dict[str, Path], delay: float = 0.25, name: str = "slow") -> Path:
    return write(tmp_path / f"{name}.yaml", f"merge_method: slow_mean\nmodels:\n  - model: {models['a']}\n"
                                         f"  - model: {models['b']}\nparameters: {{delay: {delay}}}\ndtype: float32\n")


def log_lines(cluster: dict) -> list[tuple[int, str]]:
    path = Path(cluster["driver"]["MERGEHUB_SLOW_LOG"])
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), name) for pid, name in (line.split() for line in lines)]


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_killed_mid_shard_is_retried_and_the_bytes_are_unchanged(models, ray_cluster, tmp_path):
    recipe = slow_recipe(tmp_path, models)
    Path(ray_cluster["driver"]["MERGEHUB_SLOW_LOG"]).unlink(missing_ok=True)
    driver = start_driver(recipe, tmp_path / "ray", ray_cluster)
    wait_for(lambda: len(log_lines(ray_cluster)) >= 2)
    victim, tensor = log_lines(ray_cluster)[0]
    os.kill(victim, signal.SIGKILL)  # the worker process computing `tensor`, mid-shard
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stdout + stderr
    later = [(pid, name) for pid, name in log_lines(ray_cluster) if pid != victim]
    assert (victim, tensor) in log_lines(ray_cluster) and any(name == tensor for _, name in later)  # computed again
    local_merge(slow_recipe(tmp_path, models, 0, "now"), tmp_path / "local", ray_cluster, sizes=SHARDS)
    same_files(tmp_path / "ray", tmp_path / "local")  # the delay changes nothing but time
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")]  # no temporary shard left


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_a_stopped_driver_keeps_finished_shards_for_resume(how, models, ray_cluster, tmp_path):
    recipe = slow_recipe(tmp_path, models, delay=0.1)
    out = tmp_path / "ray"
    journal = tmp_path / f".{out.name}.mergehub-partial" / "mergehub_resume.json"
    driver = start_driver(recipe, out, ray_cluster)
    wait_for(lambda: journal.exists() and json.loads(journal.read_text()).get("shards"))
    driver.send_signal(how)
    stdout, stderr = driver.communicate(timeout=120)
    if how == signal.SIGINT:
        assert driver.returncode == 130, stdout + stderr
        assert "--resume" in " ".join(stderr.split()), stderr
    kept = json.loads(journal.read_text())["shards"]
    assert kept and len(kept) < 5, kept
    before = {name: (journal.parent / name).stat() for name in kept}
    result = ray_merge(recipe, out, ray_cluster, "--resume", sizes=SHARDS)
    assert result.returncode == 0, result.output
    for name, stat in before.items():  # finished shards were kept, not written again
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    local_merge(slow_recipe(tmp_path, models, 0, "now"), tmp_path / "local", ray_cluster, sizes=SHARDS)
    same_files(out, tmp_path / "local")


def start_driver(recipe: Path, out: Path, cluster: dict) -> subprocess.Popen:
    env = {**os.environ, **cluster["driver"], "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "mergehub", "merge", str(recipe), "--out", str(out), "--executor",
                             "ray", "--ray-address", cluster["address"], *SHARDS], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_hub_models_can_come_from_each_nodes_own_cache(models, ray_cluster, tmp_path):
    """With --ray-inputs node-cache, workers resolve Hub ids through their own (offline) cache, not the driver's."""
    driver_cache = tmp_path / "driver-cache"
    for name in ("a", "b"):
        populate_hub_cache(driver_cache, f"org/tiny-{name}", models[name])
    recipe = write(tmp_path / "hub.yaml", RECIPES["linear"].format(a="org/tiny-a", b="org/tiny-b"))
    hub = {"HF_HUB_CACHE": str(driver_cache), "HF_HUB_OFFLINE": "1"}
    missing = ray_merge(recipe, tmp_path / "none", ray_cluster, "--ray-inputs", "node-cache", env=hub)
    assert missing.returncode == 1, missing.output  # the nodes' cache does not hold the models yet
    assert "'org/tiny-a' is neither a local directory nor in the Hugging Face cache" in missing.flat, missing.output
    for name in ("a", "b"):
        populate_hub_cache(ray_cluster["node_cache"], f"org/tiny-{name}", models[name])
    result = ray_merge(recipe, tmp_path / "ray", ray_cluster, "--ray-inputs", "node-cache", env=hub)
    assert result.returncode == 0, result.output
    local_merge(recipe, tmp_path / "local", ray_cluster, env=hub)
    same_files(tmp_path / "ray", tmp_path / "local")


def test_plugins_lists_the_executor():
    result = run_cli("plugins")
    assert result.returncode == 0, result.output
    row = next(line.split("\t") for line in result.stdout.splitlines() if line.startswith("executor\tray"))
    assert row[2] == "mergehub-executor-ray" and row[-1] == "ok", row
