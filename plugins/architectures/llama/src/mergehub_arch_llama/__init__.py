"""mergehub plugin: the Llama architecture definition."""

from __future__ import annotations

from importlib import resources

from mergehub import ArchitectureSpec, hookimpl


@hookimpl
def mergehub_register_architectures() -> list[ArchitectureSpec]:
    return [ArchitectureSpec.from_json(str(resources.files(__name__).joinpath("llama.json")))]
