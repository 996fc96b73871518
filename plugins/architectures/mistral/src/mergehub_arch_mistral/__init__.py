"""mergehub plugin: the Mistral architecture definition."""

from __future__ import annotations

from mergehub import ArchitectureSpec, hookimpl


@hookimpl
def mergehub_register_architectures() -> list[ArchitectureSpec]:
    return [ArchitectureSpec.from_package(__name__, "mistral.json")]
