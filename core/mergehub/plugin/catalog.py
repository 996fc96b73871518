"""What the plugins of the mergehub repository provide, and which distribution to install for a missing name.

The core registers no method, architecture or weight format itself. When a recipe names one that no installed
plugin provides, the errors use this catalog to say which distribution of the standard set would
(``pip install "mergehub[standard]"`` installs them all). tests/test_catalog.py checks that the catalog equals
what the repository's plugins really register, so it cannot drift from them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

#: The one command that installs the core and every plugin of the standard set.
STANDARD = 'pip install "mergehub[standard]"'

#: Merge method name -> the distribution that registers it.
METHODS: dict[str, str] = {
    "arcee_fusion": "mergehub-method-arcee-fusion",
    "breadcrumbs": "mergehub-method-breadcrumbs",
    "breadcrumbs_ties": "mergehub-method-breadcrumbs-ties",
    "dare_linear": "mergehub-method-dare-linear",
    "dare_ties": "mergehub-method-dare-ties",
    "della": "mergehub-method-della",
    "della_linear": "mergehub-method-della-linear",
    "karcher": "mergehub-method-karcher",
    "linear": "mergehub-method-linear",
    "model_stock": "mergehub-method-model-stock",
    "multislerp": "mergehub-method-multislerp",
    "nearswap": "mergehub-method-nearswap",
    "nuslerp": "mergehub-method-nuslerp",
    "passthrough": "mergehub-method-passthrough",
    "sce": "mergehub-method-sce",
    "slerp": "mergehub-method-slerp",
    "task_arithmetic": "mergehub-method-task-arithmetic",
    "ties": "mergehub-method-ties",
}

#: config.json ``architectures`` value -> the distribution whose hand-written definition serves it.
ARCHITECTURES: dict[str, str] = {
    "LLaMaForCausalLM": "mergehub-arch-llama",
    "LlamaForCausalLM": "mergehub-arch-llama",
    "MistralForCausalLM": "mergehub-arch-mistral",
}

#: The distribution that derives a definition for any other family transformers can build.
DERIVER = "mergehub-arch-transformers"

#: IO backend name -> the distribution that registers it.
IO_BACKENDS: dict[str, str] = {
    "pytorch": "mergehub-io-pytorch",
    "safetensors": "mergehub-io-safetensors",
}

#: MoE output format name -> the distribution that registers it (``mergehub moe``).
MOE_FORMATS: dict[str, str] = {
    "deepseek": "mergehub-moe-deepseek",
    "mixtral": "mergehub-moe-mixtral",
    "qwen2_moe": "mergehub-moe-qwen",
    "qwen3_moe": "mergehub-moe-qwen",
}

#: Executor name -> the distribution that registers it. Executors are not in the standard set: each brings
#: its own engine (Ray, for one), which most users never need.
EXECUTORS: dict[str, str] = {
    "ray": "mergehub-executor-ray",
}

#: IO backend name -> file names (glob patterns) of a model directory that backend reads.
IO_FILES: dict[str, tuple[str, ...]] = {
    "pytorch": ("pytorch_model.bin.index.json", "pytorch_model*.bin"),
    "safetensors": ("model.safetensors.index.json", "*.safetensors"),
}


def distributions() -> set[str]:
    """Every distribution of the standard set (what ``mergehub[standard]`` installs besides the core)."""
    return {*METHODS.values(), *ARCHITECTURES.values(), DERIVER, *IO_BACKENDS.values(), *MOE_FORMATS.values()}


class _Record(Protocol):
    distribution: str
    disabled: bool
    error: str | None


def install_hint(subject: str, distribution: str, records: Iterable[_Record] = (), standard: bool = True) -> str:
    """``subject`` (e.g. ``merge method 'ties'``) comes from ``distribution``, and what to do when that is
    missing, switched off or broken. ``records`` are the registry's plugin records
    (:attr:`mergehub.plugin.registry.Registry.plugins`)."""
    subject = subject[:1].upper() + subject[1:]
    record = next((r for r in records if r.distribution == distribution), None)
    if record is not None and record.disabled:
        return (f"{subject} comes from {distribution}, which is installed but switched off "
                f"(MERGEHUB_DISABLE_PLUGINS or MERGEHUB_LOAD_PLUGINS)")
    if record is not None and record.error:
        return f"{subject} comes from {distribution}, which is installed but failed to load: {record.error}"
    whole = f" (or {STANDARD} for the whole standard set)" if standard else ""
    return f"{subject} comes from {distribution}: pip install {distribution}{whole}"


def method_hint(name: str, records: Iterable[_Record] = ()) -> str | None:
    """How to get merge method ``name``, or None when no distribution of the standard set provides it."""
    distribution = METHODS.get(name)
    return install_hint(f"merge method '{name}'", distribution, records) if distribution else None


def executor_hint(name: str, records: Iterable[_Record] = ()) -> str | None:
    """How to get executor ``name``, or None when no distribution of this repository provides it."""
    distribution = EXECUTORS.get(name)
    return install_hint(f"executor '{name}'", distribution, records, standard=False) if distribution else None


def io_backend_hint(name: str, records: Iterable[_Record] = ()) -> str | None:
    """How to get IO backend ``name``, or None when no distribution of the standard set provides it."""
    distribution = IO_BACKENDS.get(name)
    return install_hint(f"IO backend '{name}'", distribution, records) if distribution else None


def architecture_hint(architectures: Iterable[str], records: Iterable[_Record] = ()) -> str:
    """What would serve these config.json ``architectures`` values that no installed plugin knows.

    A family with a hand-written definition names its distribution; any other is derived by
    mergehub-arch-transformers when transformers can build it. Empty when those distributions are loaded
    already (transformers could not build the model: nothing to install helps).
    """
    records = list(records)
    loaded = {r.distribution for r in records if not r.disabled and not r.error}
    architectures = sorted(set(architectures))
    parts = [install_hint(f"the definition of {a}", ARCHITECTURES[a], records)
             for a in architectures if a in ARCHITECTURES and ARCHITECTURES[a] not in loaded]
    if any(a not in ARCHITECTURES for a in architectures) and DERIVER not in loaded:
        parts.append(install_hint("a definition for any family transformers can build", DERIVER, records))
    return ". ".join(parts)


def formats_present(directory: Path) -> list[str]:
    """IO backend names whose files (:data:`IO_FILES`) are in ``directory``, by name."""
    try:
        names = [p.name for p in directory.iterdir() if p.is_file()]
    except OSError:
        return []
    return sorted(backend for backend, patterns in IO_FILES.items()
                  if any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in patterns))


def missing_backends_hint(directory: Path, installed: Mapping[str, object], records: Iterable[_Record] = ()) -> str | None:
    """For weights that are in ``directory`` but whose IO backend is not ``installed``: which distribution reads them."""
    records = list(records)
    hints = [install_hint(f"the {b} IO backend", IO_BACKENDS[b], records)
             for b in formats_present(directory) if b not in installed]
    return ". ".join(hints) or None
