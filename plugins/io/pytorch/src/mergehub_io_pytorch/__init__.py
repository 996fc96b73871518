"""mergehub plugin: the PyTorch ``.bin`` IO backend (read only; outputs stay safetensors)."""

from __future__ import annotations

from mergehub import IOBackendSpec, hookimpl


@hookimpl
def mergehub_register_io_backends() -> list[IOBackendSpec]:
    return [
        IOBackendSpec(
            name="pytorch",
            summary="single or sharded pytorch_model*.bin, weights-only and memory-mapped reads",
            implementation="mergehub_io_pytorch.backend:PytorchBackend",
            can_write=False,
        )
    ]
