"""Find a recipe's models and read what planning needs: config.json and tensor headers.

Nothing here reads tensor data: readers are opened on demand and only their headers
are consulted until the executor runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergehub.common.errors import MergehubError, Problem
from mergehub.models import lora, lorareader
from mergehub.plugin import catalog
from mergehub.plugin.registry import Registry
from mergehub.plugin.specs import TensorReader
from mergehub.recipe.config import ModelRef, model_refs
from mergehub.recipe.yamlsource import Document, format_path

#: Files a merge needs from a Hub model repository, besides the weights.
HUB_PATTERNS = ["*.json", "tokenizer.model", "*.jinja", "*.txt"]
#: The weights, by preference: like mergekit, safetensors if the repo has any, else PyTorch .bin
#: (whose index, a .json, comes with HUB_PATTERNS).
WEIGHT_PATTERNS = (["*.safetensors"], ["pytorch_model*.bin"])
#: The same for a PEFT adapter repository.
ADAPTER_PATTERNS = [lora.CONFIG]
ADAPTER_WEIGHT_PATTERNS = tuple([name] for name in lora.WEIGHTS)


@dataclass
class ModelInfo:
    """One input model: where it lives, its config and a lazily opened tensor reader.

    With a LoRA adapter (``ref.lora``), ``adapter_directory`` is where the adapter lives and the
    reader is the base's with the adapter applied as tensors are read (:class:`~mergehub.models.lorareader.LoraReader`).
    """

    ref: ModelRef
    directory: Path
    config: dict[str, Any]
    registry: Registry
    _reader: TensorReader | None = field(default=None, repr=False)
    planned: bool = False  # a stage output described by its plan: nothing to open or close
    adapter_directory: Path | None = None
    dtype: str | None = None  # the recipe's working dtype, in which a LoRA adapter is applied (None: the base's)

    @property
    def reader(self) -> TensorReader:
        if self._reader is None:
            reader = open_reader(self.directory, self.registry)
            if self.adapter_directory is not None:
                reader = with_adapter(reader, self.adapter_directory, adapter_label(self.ref), self.dtype)
            self._reader = reader
        return self._reader

    @property
    def architecture(self) -> str | None:
        if self.ref.override_architecture:
            return self.ref.override_architecture
        archs = self.config.get("architectures") or []
        return archs[0] if archs else None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its open reader (memory maps stay in their process): another process opens its own."""
        state = dict(self.__dict__)
        if not self.planned:
            state["_reader"] = None
        return state

    def close(self) -> None:
        if self._reader is not None and not self.planned:
            self._reader.close()
            self._reader = None


def locate(ref: ModelRef) -> Path:
    """The base model's directory: a local directory, else a Hugging Face Hub snapshot.

    huggingface_hub itself honours HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and the usual tokens.
    """
    return _resolve(ref.path, ref.revision, "model", HUB_PATTERNS, WEIGHT_PATTERNS)


def locate_in_hub_cache(ref: ModelRef, files: list[str]) -> Path:
    """``ref``'s snapshot in this machine's Hugging Face cache holding ``files`` (and the JSON beside them),
    downloading only those: how a worker node without the driver's copy of a Hub model gets what it reads."""
    return _snapshot(ref.path, ref.revision, "model", ["*.json", *files])


def locate_adapter(ref: ModelRef) -> Path:
    """The LoRA adapter's directory (``ref.lora``), found the same way as a model."""
    assert ref.lora is not None
    return _resolve(ref.lora, ref.lora_revision, "LoRA adapter", ADAPTER_PATTERNS, ADAPTER_WEIGHT_PATTERNS)


def adapter_label(ref: ModelRef) -> str:
    """How errors name the adapter of ``ref``: ``'path'`` or ``'org/name@revision'``."""
    return f"'{ref.lora}" + (f"@{ref.lora_revision}'" if ref.lora_revision else "'")


def with_adapter(base: TensorReader, directory: Path, label: str, dtype: str | None = None) -> TensorReader:
    """``base`` with the adapter in ``directory`` applied; both are closed again if they do not fit."""
    adapter = None
    try:
        adapter = lora.Adapter(directory, label)
        return lorareader.LoraReader(base, adapter, dtype)
    except BaseException:
        if adapter is not None:
            adapter.close()
        base.close()
        raise


def _resolve(path: str, revision: str | None, kind: str, patterns: list[str],
             weights: tuple[list[str], ...]) -> Path:
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise MergehubError(f"{kind} path {path} is a file, not a directory", hint="point at its directory")
    if _is_local(path):
        raise MergehubError(
            f"{kind} directory not found: {path}",
            hint="check the path (relative paths are relative to the current directory), or use a Hub id org/name",
        )
    return _hub_snapshot(path, revision, kind, patterns, weights)


def _hub_snapshot(repo: str, revision: str | None, kind: str, patterns: list[str],
                  weights: tuple[list[str], ...]) -> Path:
    """Download (or find in the cache) only what a merge needs, with the first kind of weights the repo has.

    Each kind of weights is tried in turn until one came back. huggingface_hub filters the
    repo's file list by the patterns online, and answers from its cache offline, so the same
    test works both ways.
    """
    for files in weights:
        folder = _snapshot(repo, revision, kind, patterns + files)
        if any(any(folder.glob(pattern)) for pattern in files):
            return folder
    return folder


def _snapshot(repo: str, revision: str | None, kind: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    name = repo + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE")
        raise MergehubError(
            f"{kind} '{name}' is neither a local directory nor in the Hugging Face cache" + (" (offline mode)" if offline else ""),
            hint="check the name, download it first (huggingface-cli download), or unset HF_HUB_OFFLINE",
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise MergehubError(f"cannot fetch {kind} '{name}' from the Hugging Face Hub: {exc}",
                            hint="check the id and revision, and your token for gated models") from exc


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergehubError(f"{directory} has no config.json",
                            hint="point at a Hugging Face model directory (config.json beside the weights)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MergehubError(f"cannot read {path}: {exc}", hint="check that the file exists and that you may read it") from exc
    except json.JSONDecodeError as exc:
        raise MergehubError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                            hint="repair the file or download the model again") from exc
    if not isinstance(config, dict):
        raise MergehubError(f"{path} is not a JSON object of settings", hint="repair the file or download the model again")
    return config


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
        missing = catalog.missing_backends_hint(directory, registry.io_backends, registry.plugins.values())
        if missing:  # the weights are there, their backend is not
            raise MergehubError(f"no installed IO backend can read the weights in {directory}",
                                hint=f"installed IO backends: {installed}. {missing}")
        raise MergehubError(
            f"no weights found in {directory} that an installed IO backend can read",
            hint=f"expected model.safetensors or model.safetensors.index.json (installed IO backends: {installed})",
        )
    return best[1].open(directory)


def local_model_problems(document: Document, registry: Registry, planned: Collection[str] = ()) -> list[Problem]:
    """What is wrong with the recipe's local models (missing directory, config.json, weights, headers).

    Used when the recipe text itself has problems, so that one report holds them all. Hub ids are left
    for the planner: a recipe with typos never starts a download. ``planned`` are earlier stages' outputs.
    """
    problems, seen = [], set()
    for path, value in model_refs(document.data):
        try:
            ref = ModelRef.parse(value)
        except (ValueError, KeyError, TypeError):
            continue  # reported by the recipe checks
        key = (ref.path, ref.revision, ref.lora)
        if key in seen or ref.path in planned or not _is_local(ref.path):
            continue
        seen.add(key)
        try:
            load_model(ref, registry).close()
        except MergehubError as exc:
            problems.append(Problem(exc.message, format_path(path), document.line_of(path), exc.hint))
    return problems


def _is_local(path: str) -> bool:
    """Whether ``path`` names a local directory rather than a Hub id (the rule :func:`_resolve` follows)."""
    return Path(path).expanduser().exists() or path.startswith((".", "/", "~")) or path.count("/") != 1


def load_model(ref: ModelRef, registry: Registry, dtype: str | None = None) -> ModelInfo:
    """Find the model (and its adapter) and open its weights.

    Opening reads every weight file's header (and applies a LoRA input's adapter to the base),
    so missing, damaged or mismatched files are reported while planning, at the recipe line
    that names the model.
    """
    directory = locate(ref)
    info = ModelInfo(ref=ref, directory=directory, config=read_config(directory), registry=registry,
                     adapter_directory=locate_adapter(ref) if ref.lora else None, dtype=dtype)
    info.reader  # noqa: B018
    return info
