"""Executors are plugins: a third-party one, installed as a distribution, runs merges through the hook.

The plugin here is real: a package and a dist-info with a ``mergehub`` entry point on PYTHONPATH. It
records each job it is handed (stage directory, shard files, tensors already done) into a log file named
by its own ``--executor-option``, then has the core's local executor do the work; its output must be the
local executor's, byte for byte, and the core must do the rest (lock, index, card, rename) around it.
"""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from mergehub.testing import (
    env_with_site,
    flat_output,
    forward_pass,
    install_distribution,
    load_state,
    run_cli,
)

PLUGIN = '''
from mergehub import ExecutorSpec, hookimpl

OPTIONS = {"type": "object", "additionalProperties": False, "required": ["log"],
           "properties": {"log": {"type": "string"}, "label": {"type": "integer"}}}


@hookimpl
def mergehub_register_executors():
    return [ExecutorSpec("recording", "logs each job, then runs it locally", "mergehub_recording.run:Recording", OPTIONS)]
'''

RUN = '''
import json

from mergehub.run.local import LocalExecutor


class Recording:
    def __init__(self, options):
        self.options = options
        self.local = LocalExecutor(options)

    def run(self, job):
        entry = {"directory": job.directory.name, "shards": [s.file for s in job.shards],
                 "tensors": len(job.plan.tensors), "done": job.journal.done,
                 "label": self.options.executor_options.get("label")}
        with open(self.options.executor_options["log"], "a") as log:
            log.write(json.dumps(entry) + "\\n")
        self.local.run(job)
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {"mergehub_recording/__init__.py": PLUGIN, "mergehub_recording/run.py": RUN}
    return install_distribution(tmp_path_factory.mktemp("site"), "mergehub-recording", files)


def two_stages(tmp_path: Path, a: Path, b: Path) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: blend
        merge_method: linear
        models:
          - model: {a}
            parameters: {{weight: 0.25}}
          - model: {b}
            parameters: {{weight: 0.75}}
        dtype: float32
        ---
        merge_method: linear
        models:
          - model: blend
            parameters: {{weight: 0.5}}
          - model: {a}
            parameters: {{weight: 0.5}}
        dtype: float32
        """))
    return path


def test_a_third_party_executor_runs_every_stage_with_the_local_bytes(tmp_path, tiny_models, site):
    a, b = tiny_models("a", seed=1), tiny_models("b", seed=2)
    recipe = two_stages(tmp_path, a, b)
    log = tmp_path / "jobs.jsonl"
    with ThreadPoolExecutor(2) as pool:
        local = pool.submit(run_cli, "merge", recipe, "--out", tmp_path / "local", "--shard-size", "20KB")
        plugged = pool.submit(run_cli, "merge", recipe, "--out", tmp_path / "plugged", "--shard-size", "20KB",
                              "--executor", "recording", "--executor-option", f"log={log}",
                              "--executor-option", "label=7", env=env_with_site(site))
    for result in (local.result(), plugged.result()):
        assert result.returncode == 0, result.output
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [j["directory"] for j in jobs] == [".blend.mergehub-partial", ".plugged.mergehub-partial"]
    assert all(j["done"] == 0 and j["label"] == 7 and len(j["shards"]) > 1 for j in jobs)  # 7: read as YAML, an int
    for stage in ("plugged", "plugged.stages/blend"):
        reference = tmp_path / stage.replace("plugged", "local")
        names = sorted(p.name for p in (tmp_path / stage).iterdir())
        assert names == sorted(p.name for p in reference.iterdir())
        for name in names:
            if name.endswith(".safetensors"):
                assert (tmp_path / stage / name).read_bytes() == (reference / name).read_bytes(), name
    expected = {k: 0.5 * (0.25 * v + 0.75 * load_state(b)[k]) + 0.5 * v for k, v in load_state(a).items()}
    out = load_state(tmp_path / "plugged")
    for name, tensor in expected.items():
        torch.testing.assert_close(out[name], tensor, msg=name)
    forward_pass(tmp_path / "plugged")


def test_plugins_lists_the_builtin_and_the_installed_executors(site):
    result = run_cli("plugins", "--json", env=env_with_site(site))
    assert result.returncode == 0, result.output
    executors = {(r["name"], r["distribution"]) for r in json.loads(result.stdout) if r["kind"] == "executor"}
    assert executors - {("ray", "mergehub-executor-ray")} == {("local", "mergehub"), ("recording", "mergehub-recording")}


@pytest.mark.parametrize(("args", "status", "needles"), [
    (["--executor", "recordin"], 1, ["unknown executor 'recordin'", "did you mean 'recording'", "local"]),
    (["--executor", "recording"], 1, ["executor 'recording'", "'log' is a required property", "options it takes: log, label"]),
    (["--executor", "recording", "--executor-option", "log=x", "--executor-option", "colour=blue"], 1,
     ["executor 'recording'", "'colour' was unexpected"]),
    (["--executor", "recording", "--executor-option", "log"], 2, ["expected KEY=VALUE, got 'log'"]),
], ids=["unknown", "missing-option", "unknown-option", "not-key-value"])
def test_executor_mistakes_are_clear_errors_that_write_nothing(tmp_path, tiny_models, site, args, status, needles):
    a = tiny_models("a", seed=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out", *args, env=env_with_site(site))
    text = flat_output(result.output)
    assert result.returncode == status, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
