"""What a Ray worker does with one output shard: read only the inputs it needs, merge, write, rename.

The task computes with :class:`mergehub.executing.TensorComputer`, exactly as the local executor
does (same maths, row blocks, per-tensor seeds), so the shard's bytes are the local executor's.
It writes to a hidden temporary file beside the shard and renames it once the writer has closed
(and fsync'd) it: a worker killed mid-shard leaves only a temporary file, never a shard that
looks finished, and its retry starts the shard again from nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from mergehub.executing import Plan, Shard, TensorComputer, locate_in_hub_cache

#: Temporary shard files carry this infix; the driver removes stale ones before it starts.
TEMPORARY = ".mergehub-ray-"


def write_shard(plan: Plan, directory: str, shard: Shard, backend: Any, settings: dict[str, Any],
                sink: Any) -> dict[str, Any]:
    """Compute and write ``shard`` into ``directory``; returns its summary (file, tensors, bytes, node, inputs)."""
    started = time.monotonic()
    inputs = localize_inputs(plan, shard, settings.get("inputs", "auto"))
    threads = max(1, int(settings.get("cpus_per_task", 1)))
    _set_threads(threads)
    computer = TensorComputer(plan, device=settings["device"], seed=settings["seed"],
                              max_memory=settings["max_memory"], allow_nonfinite=settings["allow_nonfinite"])
    final = Path(directory) / shard.file
    partial = final.with_name(f".{shard.file}{TEMPORARY}{uuid.uuid4().hex}")
    entries = [(t.name, t.out_dtype, t.shape) for t in shard.tensors]
    try:
        with backend.writer(partial, entries, {"format": "pt"}) as writer:
            for spec in shard.tensors:
                for block in computer.compute(spec):
                    writer.write(spec.name, block)
                if sink is not None:
                    sink.add.remote(spec.name)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
        plan.close()
    return {"file": shard.file, "tensors": [t.name for t in shard.tensors], "bytes": final.stat().st_size,
            "node": socket.gethostname(), "inputs": inputs, "seconds": round(time.monotonic() - started, 3)}


def localize_inputs(plan: Plan, shard: Shard, mode: str) -> dict[str, str]:
    """Point each model the shard reads at a directory this node can read; returns model → where from.

    A local path must be visible here (shared storage). A Hub model is read from the driver's
    snapshot when this node sees it (``auto``/``shared``), else from this node's own Hugging Face
    cache, fetching the index and only the files that hold the shard's tensors (``node-cache``).
    """
    needed: dict[int, set[str]] = {}
    for spec in shard.tensors:
        for tensor in spec.inputs:
            needed.setdefault(tensor.model, set()).add(tensor.name)
    where: dict[str, str] = {}
    for index, names in needed.items():
        model = plan.models[index]
        hub = not Path(model.ref.path).expanduser().exists()
        if hub and (mode == "node-cache" or (mode == "auto" and not model.directory.is_dir())):
            model.directory = _node_snapshot(model, names)
            where[str(model.ref)] = "node cache"
        elif not model.directory.is_dir():
            raise FileNotFoundError(f"model {model.ref}: {model.directory} is not visible on node "
                                    f"{socket.gethostname()}; put inputs on storage every node mounts at the same path")
        else:
            where[str(model.ref)] = "shared"
    return where


def _node_snapshot(model: Any, names: set[str]) -> Path:
    """This node's snapshot of a Hub model with the files holding ``names`` (the index says which)."""
    folder = locate_in_hub_cache(model.ref, [])
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({weight_map[name] for name in names if name in weight_map})
    else:
        files = ["model.safetensors"]
    return locate_in_hub_cache(model.ref, files)


def _set_threads(count: int) -> None:
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
