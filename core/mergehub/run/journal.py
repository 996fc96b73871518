"""Continue an interrupted merge from the tensors it already wrote.

An unfinished output lives in a hidden partial directory beside ``--out`` together with a
journal, ``mergehub_resume.json``: what the run was (its recipe, inputs and the options that
change bytes) and what is completely written. The local executor writes shards in plan order and
every tensor sits at an offset the plan fixes, so "the first N tensors are done" names exactly
which bytes are final; resuming cuts the shard in progress after its last complete tensor and
carries on. Executors that write whole shards in any order (several machines at once) record
each finished shard by its file name instead. The journal is replaced atomically (write, then rename) and
only after the tensor's bytes were handed to the kernel, so a killed process (``kill -9``
included) never leaves a journal that claims more than the files hold.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergehub.common.version import __version__
from mergehub.plan.fingerprint import model_fingerprint
from mergehub.plan.planner import Plan
from mergehub.plugin.registry import Registry

JOURNAL = "mergehub_resume.json"


def run_identity(plan: Plan, registry: Registry, *, seed: int | None, shard_size: int, device: str,
                 inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """What must be unchanged for a resumed run to give an uninterrupted run's bytes.

    Each entry is compared on its own, so a refusal can say which one changed. ``inputs``
    maps paths produced by earlier stages to their fingerprints (as for stage reuse).
    """
    method = plan.recipe.method
    plugin = registry.methods[method.name].plugin
    recipe = json.dumps(plan.recipe.document.data, sort_keys=True, default=str)
    models: dict[str, str] = {}
    for model in plan.models:
        known = (inputs or {}).get(model.ref.path)
        models[str(model.ref)] = known or model_fingerprint(model)
    return {
        "mergehub": __version__,
        "method": f"{plugin.distribution} {plugin.version}",
        "recipe": hashlib.sha256(recipe.encode()).hexdigest(),
        "inputs": models,
        "seed": seed if method.randomized else None,
        "shard_size": shard_size,
        "device": device,
        "trust_remote_code": plan.trust_remote_code,  # which tokenizers load, so the vocabulary rows
        "tensors": len(plan.tensors),
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why a journal's run is not this run, one sentence per change (empty: the same run)."""
    reasons: list[str] = []
    labels = {"mergehub": "the mergehub version", "method": "the method plugin", "recipe": "the recipe",
              "seed": "--seed", "shard_size": "--shard-size", "device": "--device",
              "trust_remote_code": "--trust-remote-code", "tensors": "the plan's tensor count"}
    for key, label in labels.items():
        if old.get(key) != new.get(key):
            reasons.append(f"{label} changed (was {old.get(key)!r}, now {new.get(key)!r})" if key != "recipe"
                           else "the recipe changed")
    for key in sorted((set(old) | set(new)) - set(labels) - {"inputs"}):  # what other verbs (extract-lora) record
        was, now = old.get(key), new.get(key)
        if was != now and isinstance(was, dict) and isinstance(now, dict):  # name only the settings that changed
            reasons += [f"{key}: {k} changed (was {was.get(k)!r}, now {now.get(k)!r})"
                        for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
        elif was != now:
            reasons.append(f"{key} changed (was {was!r}, now {now!r})")
    old_inputs, new_inputs = old.get("inputs") or {}, new.get("inputs") or {}
    for ref in sorted(set(old_inputs) | set(new_inputs)):
        if ref not in old_inputs:
            reasons.append(f"model {ref} was not an input of the interrupted run")
        elif ref not in new_inputs:
            reasons.append(f"model {ref} is no longer an input")
        elif old_inputs[ref] != new_inputs[ref]:
            reasons.append(f"the files of model {ref} changed since the interrupted run")
    return reasons


@dataclass
class Journal:
    """The progress record of one partial output directory."""

    directory: Path
    identity: dict[str, Any]
    done: int = 0  # tensors completely written, in plan order
    shards: dict[str, int] = field(default_factory=dict)  # shard files complete, in any order: their tensor count

    @property
    def path(self) -> Path:
        return self.directory / JOURNAL

    @property
    def saved(self) -> int:
        """Tensors whose bytes are final, however they were recorded."""
        return self.done + sum(self.shards.values())

    def save(self) -> None:
        text = json.dumps({"identity": self.identity, "done": self.done, "shards": self.shards}, indent=1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.path)

    def advance(self, count: int = 1) -> None:
        self.done += count
        self.save()

    def finish_shard(self, file: str, tensors: int) -> None:
        """Shard ``file`` (``tensors`` tensors) is complete and durable, whatever the order shards finish in."""
        self.shards[file] = tensors
        self.save()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path) -> Journal | None:
        try:
            data = json.loads((directory / JOURNAL).read_text())
            shards = {str(k): int(v) for k, v in (data.get("shards") or {}).items()}
            return cls(directory, dict(data["identity"]), int(data["done"]), shards)
        except (OSError, ValueError, KeyError, TypeError):
            return None


class MergeInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a merge, with what was kept and how to go on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
