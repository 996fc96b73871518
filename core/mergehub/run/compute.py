"""Compute one output tensor of a plan, whole or as row blocks, within the memory bound.

Inputs are read from memory-mapped files a tensor (or a block of rows) at a time, merged by the
method plugin in the working dtype and cast to the output dtype, so memory holds the inputs of one
output tensor at a time, never a whole model. The random generator of a tensor is seeded from
(``--seed``, tensor name), so the bytes do not depend on the order of work or on the executor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from mergehub.common import dtypes
from mergehub.common.errors import MergehubError
from mergehub.maths.blocks import DEFAULT_MAX_MEMORY, pass_indices, plan_blocks
from mergehub.models.vocab import padding_means, read_aligned
from mergehub.plan.estimate import peak_bytes
from mergehub.plan.planner import OutputTensor, Plan
from mergehub.plugin.specs import MergeInputs, import_object
from mergehub.run import allocator
from mergehub.run.finite import check_finite


def tensor_seed(seed: int | None, name: str) -> int:
    """A per-tensor seed from (seed, name): same bytes whatever the order of work."""
    digest = hashlib.sha256(f"{seed if seed is not None else 0}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class TensorComputer:
    """Computes the plan's tensors, each whole or in row blocks within ``max_memory``.

    Every executor computes with this, so every executor gives the same bytes.
    """

    def __init__(self, plan: Plan, device: str = "cpu", seed: int | None = None,
                 max_memory: int = DEFAULT_MAX_MEMORY, allow_nonfinite: bool = False):
        self.plan = plan
        self.allow_nonfinite = allow_nonfinite
        self.device = torch.device(device)
        self.seed = seed
        self.max_memory = max_memory
        allocator.tune()
        method = plan.recipe.method
        self.merge = method.load()
        self.kind = method.blocks
        self.factory = import_object(self.kind) if ":" in self.kind else None
        self.means: dict[str, list[torch.Tensor]] = {}  # padding rows of the vocabulary tensor being computed

    def ranges(self, spec: OutputTensor) -> list[tuple[int, int]] | None:
        """Row blocks for ``spec``; None means "read it whole" (it fits, or cannot be split)."""
        return plan_blocks(spec.shape, peak_bytes(spec), self.kind, self.max_memory)

    def load(self, spec: OutputTensor, rows: tuple[int, int] | None) -> list[torch.Tensor]:
        readers = [self.plan.models[i.model].reader for i in spec.inputs]
        if spec.vocab is not None:
            return self.load_aligned(spec, rows or (0, spec.shape[0]))
        if rows is None:
            return [r.read(i.name) for r, i in zip(readers, spec.inputs)]
        return [r.read_rows(i.name, *rows) for r, i in zip(readers, spec.inputs)]

    def load_aligned(self, spec: OutputTensor, rows: tuple[int, int]) -> list[torch.Tensor]:
        """Rows of the inputs rebuilt for the output vocabulary, reading only the model rows they need."""
        assert spec.vocab is not None
        readers = [self.plan.models[i.model].reader for i in spec.inputs]
        names = [i.name for i in spec.inputs]
        targets = [dtypes.to_torch(spec.work_dtype or d) for d in spec.in_dtypes]
        common = dtypes.to_torch(spec.work_dtype or dtypes.promote(spec.in_dtypes))

        def block(start: int, stop: int, padding: Any = None) -> list[torch.Tensor]:
            return read_aligned(spec.vocab, readers, names, targets, common, start, stop, padding)  # type: ignore[arg-type]

        def means() -> list[torch.Tensor]:
            if spec.name not in self.means:
                self.means.clear()  # only the tensor being computed needs them
                real = spec.vocab.real  # type: ignore[union-attr]
                ranges = [(a, min(b, real)) for a, b in self.ranges(spec) or [(0, real)] if a < real]
                self.means[spec.name] = padding_means(block, ranges, targets)
            return self.means[spec.name]

        return block(*rows, means if spec.vocab.padded else None)

    def inputs(self, spec: OutputTensor, rows: tuple[int, int] | None, tensors: list[torch.Tensor]) -> MergeInputs:
        work = dtypes.to_torch(spec.work_dtype or dtypes.promote(spec.in_dtypes))
        generator = None
        if self.plan.recipe.method.randomized:
            generator = torch.Generator(device=self.device).manual_seed(tensor_seed(self.seed, spec.name))
        return MergeInputs(spec.name, [t.to(device=self.device, dtype=work) for t in tensors], spec.base, spec.params,
                           spec.shared, [str(self.plan.models[i.model].ref) for i in spec.inputs], generator,
                           offset=rows[0] if rows else 0, full_shape=spec.shape)

    def compute(self, spec: OutputTensor) -> Iterator[torch.Tensor]:
        """The output tensor, whole or as consecutive row blocks, in the output dtype on the CPU."""
        if not spec.floating:
            yield self.finish(spec, _identical_or_fail(spec, self.load(spec, None)), spec.shape)
            return
        ranges = self.ranges(spec)
        if self.factory is not None:
            ranges = ranges or [(0, spec.shape[0] if spec.shape else 1)]
            yield from self.multi_pass(spec, ranges)
            return
        for rows in ranges or [None]:
            block = self.merge(self.inputs(spec, rows, self.load(spec, rows)))
            yield self.finish(spec, block, self.block_shape(spec, rows))

    def multi_pass(self, spec: OutputTensor, ranges: list[tuple[int, int]]) -> Iterator[torch.Tensor]:
        whole = not spec.shape
        meta = self.inputs(spec, None, [torch.empty(0) for _ in spec.inputs])  # no data, but the working dtype
        merger = self.factory(meta)
        for pass_index in pass_indices(merger):
            for rows in ranges:
                merger.collect(pass_index, self.inputs(spec, rows, self.load(spec, None if whole else rows)))
        for rows in ranges:
            block = merger.merge(self.inputs(spec, rows, self.load(spec, None if whole else rows)))
            yield self.finish(spec, block, spec.shape if whole else self.block_shape(spec, rows))

    @staticmethod
    def block_shape(spec: OutputTensor, rows: tuple[int, int] | None) -> tuple[int, ...]:
        return spec.shape if rows is None else (rows[1] - rows[0], *spec.shape[1:])

    def finish(self, spec: OutputTensor, result: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(result.shape) != shape:
            raise MergehubError(f"method '{self.plan.recipe.method.name}' returned shape {tuple(result.shape)} "
                                f"for {spec.name}, expected {shape}", hint="this is a bug in the method plugin")
        if not self.allow_nonfinite:
            check_finite(spec, result, self.plan)
        return result.to(device="cpu", dtype=dtypes.to_torch(spec.out_dtype)).contiguous()


def _identical_or_fail(spec: OutputTensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    first = tensors[0]
    if any(t.dtype != first.dtype or not torch.equal(t, first) for t in tensors[1:]):
        raise MergehubError(f"non-floating tensor '{spec.name}' differs between inputs",
                            hint="integer buffers are copied, not merged; make them equal before merging")
    return first
