"""mergehub plugin: the Qwen2 architecture definition."""

from __future__ import annotations

from mergehub import ArchitectureSpec, hookimpl


@hookimpl
def mergehub_register_architectures() -> list[ArchitectureSpec]:
    return [ArchitectureSpec.from_package(__name__, "qwen2.json")]
