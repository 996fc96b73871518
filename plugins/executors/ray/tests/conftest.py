"""A real Ray cluster on this machine for the executor's tests: a head without CPUs and two one-CPU worker
nodes (separate raylets and worker processes), started once per test module and shut down after it (with
pytest-xdist, once in each test process that runs these tests).

The nodes inherit this process's environment when they start, so the slow test method (a real plugin
distribution on PYTHONPATH) is importable on the workers as it would be on a cluster where every node
has the same plugins installed.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from mergehub.testing import install_distribution

#: Object store per node: the plan and the progress messages are all that go through it.
STORE = 100 * 1024**2

SLOW_SCHEMA = """
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "description": "The mean of the models, after a pause per tensor (for tests that stop a run midway).",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "delay": {"type": "number", "minimum": 0, "default": 0.3, "description": "Seconds to wait per tensor.", "x-scope": "shared"}
  },
  "x-mergehub": {"name": "slow_mean", "base": "ignored", "min_inputs": 1, "blocks": "elementwise"}
}
"""

SLOW_INIT = """
from mergehub import MethodSpec, hookimpl


@hookimpl
def mergehub_register_methods():
    return [MethodSpec.from_package(__name__)]
"""

SLOW_METHOD = '''
"""The mean of the inputs in float32, after ``delay`` seconds; logs "pid tensor" to $MERGEHUB_SLOW_LOG first."""
import os
import time

import torch


def merge(inputs):
    log = os.environ.get("MERGEHUB_SLOW_LOG")
    if log:
        with open(log, "a") as file:
            file.write(f"{os.getpid()} {inputs.name}\\n")
    time.sleep(inputs.shared["delay"])
    total = torch.stack([t.float() for t in inputs.tensors]).sum(0)
    return (total / len(inputs.tensors)).to(inputs.tensors[0].dtype)
'''


@pytest.fixture(scope="module")
def slow_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {"mergehub_slow_mean/__init__.py": SLOW_INIT, "mergehub_slow_mean/method.py": SLOW_METHOD,
             "mergehub_slow_mean/parameters.schema.json": SLOW_SCHEMA}
    return install_distribution(tmp_path_factory.mktemp("slow-site"), "mergehub-slow-mean",
                                {k: textwrap.dedent(v) for k, v in files.items()})


@pytest.fixture(scope="module")
def ray_cluster(slow_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``address``; ``driver``: the environment a driver runs with; ``node_cache``: the worker nodes' own
    Hugging Face cache (offline), which is not the driver's."""
    from ray.cluster_utils import Cluster

    log = tmp_path_factory.mktemp("slow-log") / "calls.log"
    node_cache = tmp_path_factory.mktemp("node-hub-cache")
    path = os.pathsep.join(filter(None, [str(slow_site), os.environ.get("PYTHONPATH")]))
    driver = {"PYTHONPATH": path, "MERGEHUB_SLOW_LOG": str(log)}
    env = {**driver, "RAY_DEDUP_LOGS": "0", "HF_HUB_CACHE": str(node_cache), "HF_HUB_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                                "object_store_memory": STORE})
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield {"address": cluster.address, "driver": driver, "node_cache": node_cache}
    finally:
        cluster.shutdown()
