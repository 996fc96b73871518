"""Merging a tensor in row blocks, so memory is bounded by ``--max-memory``, not by the tensor.

Methods say how they can be blocked (``x-mergehub.blocks``):

- ``elementwise``: the method's ``merge`` works on any block of rows (of elements for 1-D tensors);
- ``rows``: it works on blocks of whole rows (a 1-D tensor is one row);
- ``"package.module:factory"``: statistics over the whole tensor are needed first. ``factory(meta)``
  gets a :class:`~mergehub.plugin.specs.MergeInputs` whose tensors are empty (they tell the working dtype),
  with name, params, shared and ``full_shape``,
  and returns a :class:`BlockMerge`, which sees every block ``passes`` times through ``collect`` and
  then once more through ``merge``, in row order. ``passes`` is read again after each pass, so a
  merger that finds it needs another pass (a prediction that failed) may raise it while collecting. Its results must not depend on where the blocks
  start and end, so the bytes are the same whatever ``--max-memory`` is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from mergehub.plugin.specs import MergeInputs

#: Default bound for the tensors the maths holds at once (inputs, working copies, result).
DEFAULT_MAX_MEMORY = 256 * 1024**2
#: Blockable tensors are processed in blocks of at most this many elements even when they would fit:
#: blocks of a few MB stay in the allocator's reusable heap and in cache, instead of fresh zeroed pages.
BLOCK_ELEMENTS = 1 << 20


class BlockMerge(Protocol):
    passes: int

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        """Accumulate statistics from one block (called for every block, ``passes`` times over)."""

    def merge(self, block: MergeInputs) -> torch.Tensor:
        """The output rows of one block, once the statistics are complete."""


def pass_indices(merger: BlockMerge) -> Iterator[int]:
    """0, 1, … while below ``merger.passes``, which is read again after every pass."""
    index = 0
    while index < merger.passes:
        yield index
        index += 1


def merge_whole(merger: BlockMerge, inputs: MergeInputs) -> torch.Tensor:
    """Run a block merger over a tensor given whole (one block): how a plugin's ``merge`` shares its maths."""
    for pass_index in pass_indices(merger):
        merger.collect(pass_index, inputs)
    return merger.merge(inputs)


def plan_blocks(shape: tuple[int, ...], peak: int, kind: str, max_memory: int) -> list[tuple[int, int]] | None:
    """The row blocks a tensor of ``shape`` is merged in, given the bytes ``peak`` it needs whole.

    None means "merge it whole": the method cannot split it, or it is one block and the method
    has no multi-pass merger. Shared by the executor and by ``mergehub plan``'s memory figure.
    """
    if not shape or kind == "none" or (kind == "rows" and len(shape) == 1):
        return None
    rows = shape[0]
    per_row = max(1, peak // max(1, rows))
    row_elements = max(1, math.prod(shape[1:]))
    blocks = row_ranges(rows, min(max_memory // per_row, max(1, BLOCK_ELEMENTS // row_elements)))
    return None if len(blocks) == 1 and ":" not in kind else blocks


def block_peak(shape: tuple[int, ...], peak: int, kind: str, max_memory: int) -> int:
    """The bytes the largest block of a tensor needs (``peak`` when it is merged whole)."""
    blocks = plan_blocks(shape, peak, kind, max_memory)
    if not blocks:
        return peak
    return max(stop - start for start, stop in blocks) * max(1, peak // max(1, shape[0]))


def row_ranges(rows: int, rows_per_block: int) -> list[tuple[int, int]]:
    step = max(1, rows_per_block)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)] or [(0, 0)]
