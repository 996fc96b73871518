"""Find a recipe's models and read what planning needs: config.json and tensor headers.

Nothing here reads tensor data: readers are opened on demand and only their headers
are consulted until the executor runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mergehub.config import ModelRef
from mergehub.errors import MergehubError
from mergehub.registry import Registry

#: Files a merge needs from a Hub repository.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


@dataclass(frozen=True)
class TensorHeader:
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]


class TensorReader(Protocol):
    """What an IO backend's reader offers."""

    def tensor_names(self) -> list[str]: ...
    def header(self, name: str) -> TensorHeader: ...
    def read(self, name: str) -> Any: ...
    def close(self) -> None: ...


@dataclass
class ModelInfo:
    """One input model: where it lives, its config and a lazily opened tensor reader."""

    ref: ModelRef
    directory: Path
    config: dict[str, Any]
    registry: Registry
    _reader: TensorReader | None = field(default=None, repr=False)
    planned: bool = False  # a stage output described by its plan: nothing to open or close

    @property
    def reader(self) -> TensorReader:
        if self._reader is None:
            self._reader = open_reader(self.directory, self.registry)
        return self._reader

    @property
    def architecture(self) -> str | None:
        if self.ref.override_architecture:
            return self.ref.override_architecture
        archs = self.config.get("architectures") or []
        return archs[0] if archs else None

    def close(self) -> None:
        if self._reader is not None and not self.planned:
            self._reader.close()
            self._reader = None


def locate(ref: ModelRef) -> Path:
    """A local directory, else a Hugging Face Hub snapshot (honours HF_HOME, HF_HUB_OFFLINE)."""
    if ref.lora:
        raise MergehubError(
            f"LoRA model references are not supported yet: {ref}",
            hint="merge the adapter into its base first (PEFT merge_and_unload), then reference that directory",
        )
    local = Path(ref.path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise MergehubError(f"model path {ref.path} is a file, not a directory", hint="point at the model's directory")
    if ref.path.startswith((".", "/", "~")) or ref.path.count("/") != 1:
        raise MergehubError(
            f"model directory not found: {ref.path}",
            hint="check the path (relative paths are relative to the current directory), or use a Hub id org/name",
        )
    return _hub_snapshot(ref)


def _hub_snapshot(ref: ModelRef) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref.path, revision=ref.revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE")
        raise MergehubError(
            f"model '{ref}' is neither a local directory nor in the Hugging Face cache" + (" (offline mode)" if offline else ""),
            hint="check the name, download it first (huggingface-cli download), or unset HF_HUB_OFFLINE",
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise MergehubError(f"cannot fetch model '{ref}' from the Hugging Face Hub: {exc}",
                            hint="check the id and revision, and your token for gated models") from exc


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergehubError(f"{directory} has no config.json", hint="is this a Hugging Face model directory?") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise MergehubError(f"cannot read {path}: {exc}") from exc


def open_reader(directory: Path, registry: Registry) -> TensorReader:
    """Open the weights with the backend that claims the directory with the highest priority."""
    best: tuple[int, Any] | None = None
    for registered in registry.io_backends.values():
        backend = registered.spec.load()
        priority = backend.detect(directory)
        if priority is not None and (best is None or priority > best[0]):
            best = (priority, backend)
    if best is None:
        installed = ", ".join(sorted(registry.io_backends)) or "none"
        raise MergehubError(
            f"no weights found in {directory} that an installed IO backend can read",
            hint=f"expected model.safetensors or model.safetensors.index.json (installed IO backends: {installed})",
        )
    return best[1].open(directory)


def load_model(ref: ModelRef, registry: Registry) -> ModelInfo:
    directory = locate(ref)
    return ModelInfo(ref=ref, directory=directory, config=read_config(directory), registry=registry)
