"""Is a stage's earlier result still valid? A fingerprint of its recipe and its inputs.

The fingerprint covers the stage's recipe (after stage names were resolved), the method
plugin's distribution and version, the seed for randomised methods, and every input: the
fingerprint of an input stage, or the names, sizes and modification times of a model
directory's files. It is stored in the stage's output as ``mergehub_stage.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mergehub.common.version import __version__
from mergehub.models.loader import ModelInfo
from mergehub.plan.planner import Plan
from mergehub.plugin.registry import Registry

STAMP = "mergehub_stage.json"


def directory_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != STAMP:
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def model_fingerprint(model: ModelInfo) -> str:
    """A model directory's fingerprint, and its LoRA adapter's when it has one."""
    parts = [directory_fingerprint(model.directory)]
    if model.adapter_directory is not None:
        parts.append(directory_fingerprint(model.adapter_directory))
    return ":".join(parts)


def stage_fingerprint(plan: Plan, registry: Registry, seed: int | None, inputs: dict[str, str]) -> str:
    """``inputs`` maps input paths produced by earlier stages to their fingerprints."""
    method = plan.recipe.method
    plugin = registry.methods[method.name].plugin
    parts = {
        "mergehub": __version__,
        "recipe": plan.recipe.document.data,
        "method": [plugin.distribution, plugin.version],
        "seed": seed if method.randomized else None,
        "inputs": {str(m.ref): inputs.get(m.ref.path) or model_fingerprint(m) for m in plan.models},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stamp(fingerprint: str, name: str | None, recipe: str | None) -> str:
    """What a stage leaves in its output: its fingerprint, its name and the recipe file it came from."""
    return json.dumps({"fingerprint": fingerprint, "stage": name, "recipe": recipe}, indent=2) + "\n"


def stored_stamp(directory: Path) -> dict:
    try:
        data = json.loads((directory / STAMP).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def stored_fingerprint(directory: Path) -> str | None:
    return stored_stamp(directory).get("fingerprint")
