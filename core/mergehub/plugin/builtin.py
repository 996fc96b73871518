"""Plugins the core registers itself, through the same hooks as installed ones: the ``local`` executor.

Nothing here imports the implementation; the spec names it by dotted path, like any plugin's.
"""

from __future__ import annotations

from mergehub.plugin.hookspecs import hookimpl
from mergehub.plugin.specs import ExecutorSpec

#: The name under which the built-in plugin is listed (its distribution is the core).
NAME = "mergehub"

LOCAL = ExecutorSpec(
    name="local",
    summary="this machine: tensor by tensor from memory-mapped inputs, in row blocks within --max-memory",
    implementation="mergehub.run.local:LocalExecutor",
)


@hookimpl
def mergehub_register_executors() -> list[ExecutorSpec]:
    return [LOCAL]
