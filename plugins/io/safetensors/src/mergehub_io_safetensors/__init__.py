"""mergehub plugin: the safetensors IO backend."""

from __future__ import annotations

from mergehub import IOBackendSpec, hookimpl


@hookimpl
def mergehub_register_io_backends() -> list[IOBackendSpec]:
    return [
        IOBackendSpec(
            name="safetensors",
            summary="single or sharded .safetensors, memory-mapped reads, streaming writes",
            implementation="mergehub_io_safetensors.backend:SafetensorsBackend",
            can_write=True,
        )
    ]
