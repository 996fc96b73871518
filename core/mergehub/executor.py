"""Compute a plan tensor by tensor and stream the results into shards.

Inputs are read one tensor at a time from memory-mapped files, merged, cast and
written straight to their place in the shard, so memory holds the inputs of one
output tensor at a time, never a whole model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergehub import dtypes
from mergehub.errors import MergehubError
from mergehub.plan import OutputTensor, Plan
from mergehub.specs import MergeInputs

Progress = Callable[[OutputTensor], None]


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: list[OutputTensor]


def layout_shards(tensors: list[OutputTensor], shard_size: int) -> list[Shard]:
    """Group tensors into shards of at most ``shard_size`` bytes (an oversized tensor gets its own)."""
    groups: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    if len(groups) == 1:
        return [Shard("model.safetensors", groups[0])]
    n = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def tensor_seed(seed: int | None, name: str) -> int:
    """A per-tensor seed from (seed, name): same bytes whatever the order of work."""
    digest = hashlib.sha256(f"{seed if seed is not None else 0}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Executor:
    def __init__(self, plan: Plan, device: str = "cpu", seed: int | None = None):
        self.plan = plan
        self.device = torch.device(device)
        self.seed = seed
        self.merge = plan.recipe.method.load()

    def compute(self, spec: OutputTensor) -> torch.Tensor:
        tensors = [self.plan.models[i.model].reader.read(i.name) for i in spec.inputs]
        if not spec.floating:
            result = _identical_or_fail(spec, tensors)
        else:
            work = dtypes.to_torch(spec.work_dtype) if spec.work_dtype else dtypes.to_torch(dtypes.promote(spec.in_dtypes))
            tensors = [t.to(device=self.device, dtype=work) for t in tensors]
            generator = None
            if self.plan.recipe.method.randomized:
                generator = torch.Generator(device=self.device).manual_seed(tensor_seed(self.seed, spec.name))
            inputs = MergeInputs(spec.name, tensors, spec.base, spec.params, spec.shared,
                                 [str(self.plan.models[i.model].ref) for i in spec.inputs], generator)
            result = self.merge(inputs)
        if tuple(result.shape) != spec.shape:
            raise MergehubError(f"method '{self.plan.recipe.method.name}' returned shape {tuple(result.shape)} "
                                f"for {spec.name}, expected {spec.shape}", hint="this is a bug in the method plugin")
        return result.to(device="cpu", dtype=dtypes.to_torch(spec.out_dtype)).contiguous()

    def write(self, directory: Path, backend: Any, shard_size: int, progress: Progress | None = None) -> list[Shard]:
        """Write every shard into ``directory`` with the IO ``backend``; returns the shard layout."""
        shards = layout_shards(self.plan.tensors, shard_size)
        for shard in shards:
            entries = [(t.name, t.out_dtype, t.shape) for t in shard.tensors]
            with backend.writer(directory / shard.file, entries, {"format": "pt"}) as writer:
                for spec in shard.tensors:
                    writer.write(spec.name, self.compute(spec))
                    if progress:
                        progress(spec)
        return shards


def _identical_or_fail(spec: OutputTensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    first = tensors[0]
    if any(t.dtype != first.dtype or not torch.equal(t, first) for t in tensors[1:]):
        raise MergehubError(f"non-floating tensor '{spec.name}' differs between inputs",
                            hint="integer buffers are copied, not merged; make them equal before merging")
    return first


def weight_map(shards: list[Shard]) -> dict[str, Any]:
    return {t.name: s.file for s in shards for t in s.tensors}
