"""mergehub plugin: the ``ray`` executor (``mergehub merge recipe.yaml --executor ray --ray-address auto``)."""

from __future__ import annotations

import json
from importlib import resources

from mergehub import ExecutorSpec, hookimpl

OPTIONS = json.loads(resources.files(__name__).joinpath("options.schema.json").read_text(encoding="utf-8"))


@hookimpl
def mergehub_register_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec(
        name="ray",
        summary="a Ray cluster: one task per output shard, written in place on shared storage",
        implementation="mergehub_executor_ray.executor:RayExecutor",
        options=OPTIONS,
    )]
