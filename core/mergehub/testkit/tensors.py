"""Tensors for testing merge maths: related inputs, and a block merger driven the way the executor drives it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def related_tensors(shape: tuple[int, ...], dtype: Any, n: int = 4, seed: int = 0) -> list[Any]:
    """A random base tensor and ``n - 1`` variants of it (noise of std 0.1), like fine-tunes of one model."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base.to(dtype)] + [(base + 0.1 * torch.randn(shape, generator=g)).to(dtype) for _ in range(n - 1)]


def merge_in_blocks(factory: Callable[[Any], Any], inputs: Any, cuts: list[int], seed: int | None = None) -> Any:
    """What the executor does with a multi-pass block merger (``x-mergehub.blocks``), for tests.

    ``inputs`` is a :class:`~mergehub.plugin.specs.MergeInputs` holding whole tensors; the merger is built
    from their empty metadata and sees rows ``cuts[i]:cuts[i + 1]`` as blocks: every block through
    ``collect`` in each pass, then through ``merge``. Returns the merged blocks concatenated. With
    ``seed`` (random methods), the metadata and every block get a fresh generator seeded with it, as
    the executor's MergeInputs do; without it they share ``inputs.generator``.
    """
    import dataclasses
    import itertools

    import torch

    from mergehub.maths.blocks import pass_indices

    shape = tuple(inputs.full_shape or inputs.tensors[0].shape)
    empty = [torch.empty(0, dtype=x.dtype, device=x.device) for x in inputs.tensors]

    def generator() -> Any:
        return inputs.generator if seed is None else torch.Generator().manual_seed(seed)

    merger = factory(dataclasses.replace(inputs, tensors=empty, offset=0, full_shape=shape, generator=generator()))
    ranges = list(itertools.pairwise(cuts))

    def block(start: int, stop: int) -> Any:
        return dataclasses.replace(inputs, tensors=[x[start:stop] for x in inputs.tensors], offset=start,
                                   full_shape=shape, generator=generator())

    for pass_index in pass_indices(merger):
        for rows in ranges:
            merger.collect(pass_index, block(*rows))
    return torch.cat([merger.merge(block(*rows)) for rows in ranges])
