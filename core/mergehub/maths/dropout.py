"""Random dropping of task-vector entries in blocks: DARE (uniform keep probability) and DELLA
(keep probability rising with the magnitude rank within each row).

Each model's keep mask is a function of the element's flat index (see :mod:`mergehub.maths.randstream`),
so a block's mask is drawn again, identically, in every pass instead of being stored. With
``rescale``, pass 0 sums ‖δᵢ‖₁ and ‖dᵢ‖₁ per row (:func:`row_sums`, into a float64 buffer of one
value per row, added up exactly with :func:`math.fsum`), so the factor does not depend on where
the blocks start; the merge pass draws the masks again, rescales and combines
(:func:`mergehub.maths.taskarith.combine`). Arithmetic stays in the inputs' dtype (float32 for float16,
whose masks mergekit draws and applies in float32).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from mergehub.maths import randstream, sparsify
from mergehub.maths.taskarith import Consensus, combine, split_base
from mergehub.plugin.specs import MergeInputs

#: Rows longer than this are summed in pieces of this length, so one row is never split between threads.
_ROW_PIECE = 1 << 14
#: Blocks are worked through in pieces of whole rows of about this many elements: the dozen
#: temporaries of a piece stay in the CPU cache, which makes the kernels about 1.5 times faster.
PIECE_ELEMENTS = 1 << 18
#: A tensor whose keep masks, one bit per element and model, fit in this many bytes keeps the masks the
#: rescale pass drew for the merge pass instead of drawing them again (drawing is most of DELLA's time).
MASK_CACHE_BYTES = 1 << 22


class DropBlocks:
    """The two-pass block merger shared by DARE and DELLA; subclasses draw the keep masks."""

    def __init__(self, meta: MergeInputs, consensus: Consensus):
        self.consensus = consensus
        self.shared = meta.shared
        self.shape = tuple(meta.full_shape if meta.full_shape is not None else meta.tensors[0].shape)
        self.numel = math.prod(self.shape)
        self.row_elements = max(1, math.prod(self.shape[1:]))  # elements per block row (along dim 0)
        self.work = sparsify.sampling_dtype(meta.tensors[0])
        self.device = meta.tensors[0].device
        self.params = [p for i, p in enumerate(meta.params) if i != meta.base]
        self.drops = [p["density"] < 1 for p in self.params]
        self.small = self.numel <= randstream.SMALL_TENSOR
        self.generator = randstream.clone_generator(meta.generator)  # the small tensors' draws start here
        seed = randstream.generator_seed(meta.generator)
        self.streams = [randstream.LaneStream(seed, i) if drop and not self.small else None
                        for i, drop in enumerate(self.drops)]
        self.rescale = bool(meta.shared.get("rescale", False)) and any(self.drops)
        rows = self.numel // self.row_elements
        self.l1 = [(torch.zeros(rows, dtype=torch.float64), torch.zeros(rows, dtype=torch.float64))
                   if drop and self.rescale else None for drop in self.drops]
        self.factors: list[torch.Tensor | None] | None = None
        self.passes = 1 if self.rescale else 0
        drawn = sum(1 for drop, sums in zip(self.drops, self.l1) if drop and sums is not None)
        self.cached: dict[tuple[int, int], np.ndarray] | None = \
            {} if drawn and self.numel * drawn <= 8 * MASK_CACHE_BYTES else None

    def keep(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        """Model ``i``'s keep mask (0/1 in the working dtype) for the block of ``delta`` starting at flat ``start``."""
        raise NotImplementedError

    def block_deltas(self, block: MergeInputs) -> tuple[torch.Tensor, list[torch.Tensor], list[dict], int]:
        """The base, the task vectors δᵢ and parameters of a block, and the flat index it starts at."""
        base, others, params = split_base(block)
        return base, [torch.sub(x, base) for x in others], params, block.offset * self.row_elements

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        for piece in self.pieces_of(block):
            base, others, _ = split_base(piece)
            start = piece.offset * self.row_elements
            for i, tensor in enumerate(others):
                if self.l1[i] is not None:
                    delta = torch.sub(tensor, base)
                    keep = self.keep(i, start, delta)
                    self.remember(i, start, keep)
                    self.accumulate(i, start, delta, keep)

    def remember(self, i: int, start: int, keep: torch.Tensor) -> None:
        """Keep a piece's mask, packed to one bit per element, for the merge pass (small tensors only)."""
        if self.cached is not None and keep.device.type == "cpu":
            self.cached[(i, start)] = np.packbits(torch.ne(keep, 0).numpy().reshape(-1))

    def recall(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        """Model ``i``'s keep mask for a piece: the one the rescale pass remembered, else drawn again."""
        packed = self.cached.pop((i, start), None) if self.cached is not None else None
        if packed is None:
            return self.keep(i, start, delta)
        bits = np.unpackbits(packed, count=delta.numel())
        return torch.from_numpy(bits).view(delta.shape).to(self.work)

    def pieces_of(self, block: MergeInputs) -> list[MergeInputs]:
        """``block`` cut into pieces of whole rows of about :data:`PIECE_ELEMENTS` (all results are per row)."""
        rows = block.tensors[0].shape[0] if block.tensors[0].dim() else 1
        step = max(1, PIECE_ELEMENTS // self.row_elements)
        if rows <= step:
            return [block]
        return [replace(block, tensors=[t[r : r + step] for t in block.tensors], offset=block.offset + r)
                for r in range(0, rows, step)]

    def accumulate(self, i: int, start: int, delta: torch.Tensor, keep: torch.Tensor) -> None:
        if not delta.numel():
            return
        magnitude = delta.to(self.work).abs_()  # δ is this block's own copy
        first = start // self.row_elements
        rows = slice(first, first + delta.numel() // self.row_elements)
        total, kept = self.l1[i]  # type: ignore[misc]
        total[rows] = row_sums(magnitude, rows.stop - rows.start)
        kept[rows] = row_sums(magnitude.mul_(keep), rows.stop - rows.start)

    def rescale_factors(self) -> list[torch.Tensor | None]:
        if self.factors is None:
            self.factors = []
            for sums in self.l1:
                before, after = (math.fsum(s.tolist()) for s in sums) if sums is not None else (0.0, 0.0)
                ok = min(before, after) >= 1e-7
                self.factors.append(torch.tensor(before / after, dtype=self.work) if ok else None)
        return self.factors

    def merge(self, block: MergeInputs) -> torch.Tensor:
        pieces = self.pieces_of(block)
        if len(pieces) == 1:
            return self.merge_piece(block)
        return torch.cat([self.merge_piece(piece) for piece in pieces])

    def merge_piece(self, block: MergeInputs) -> torch.Tensor:
        base, deltas, params, start = self.block_deltas(block)
        if not deltas:
            return base
        factors = self.rescale_factors()
        kept = []
        for i, delta in enumerate(deltas):
            if not self.drops[i]:
                kept.append(delta)
                continue
            sparse = delta.to(self.work).mul_(self.recall(i, start, delta))  # in place: δ is not used again
            if factors[i] is not None:
                sparse.mul_(factors[i])
            kept.append(sparse.to(delta.dtype))
        return combine(base, kept, params, self.shared, self.consensus)


class DareBlocks(DropBlocks):
    """DARE: every entry kept with probability ``density`` (rounded to the working dtype, as mergekit's
    ``torch.full(shape, density)`` is)."""

    def __init__(self, meta: MergeInputs, consensus: Consensus):
        super().__init__(meta, consensus)
        probabilities = [float(torch.tensor(p["density"], dtype=self.work)) for p in self.params]
        self.bounds = [randstream.threshold(p) for p in probabilities]
        self.probabilities = probabilities
        self.masks: list[torch.Tensor | None] | None = None

    def keep(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        n = delta.numel()
        if self.small:
            return self.small_masks()[i].reshape(-1)[start : start + n].view(delta.shape)  # type: ignore[union-attr]
        lanes = self.streams[i].lanes(start, n).view(delta.shape).to(self.device)  # type: ignore[union-attr]
        return torch.lt(lanes, self.bounds[i], out=torch.empty(delta.shape, dtype=self.work, device=self.device))

    def small_masks(self) -> list[torch.Tensor | None]:
        if self.masks is None:  # model after model from the tensor's generator, as torch.bernoulli draws them
            self.masks = [torch.bernoulli(torch.full(self.shape, p, dtype=self.work), generator=self.generator)
                          if drop else None for drop, p in zip(self.drops, self.probabilities)]
        return self.masks


class DellaBlocks(DropBlocks):
    """DELLA's MAGPRUNE: within each row (last dim), the entry of magnitude rank r ∈ [0, 1] is kept with
    probability density − ε + 2ε·r; equal magnitudes are ranked by position.

    Rows are never split (2-D and larger tensors come in blocks of whole rows). A 1-D tensor is one
    row, and a small tensor is drawn whole from the torch generator, so both are gathered in
    pass 0 and their masks kept until the merge pass; they are small.
    """

    def __init__(self, meta: MergeInputs, consensus: Consensus):
        super().__init__(meta, consensus)
        for p in self.params:
            if 0 < p["density"] < 1 and (problem := sparsify.check_della(p["density"], p["epsilon"])):
                raise ValueError(problem)
        self.row_length = self.shape[-1] if len(self.shape) > 1 else max(1, self.numel)
        self.tables = [None if not drop else torch.zeros(self.row_length, dtype=self.work) if p["density"] <= 0
                       else keep_probabilities(self.row_length, p["density"], p["epsilon"], self.work)
                       for drop, p in zip(self.drops, self.params)]  # density ≤ 0 keeps nothing
        self.gather = (self.small or len(self.shape) <= 1) and any(self.drops)
        self.pieces: list[list[torch.Tensor]] = [[] for _ in self.params]
        self.masks: list[torch.Tensor | None] | None = None
        self.passes = 1 if self.gather or self.rescale else 0

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        if not self.gather:
            super().collect(pass_index, block)
            return
        _, deltas, _, start = self.block_deltas(block)
        for pieces, delta in zip(self.pieces, deltas):
            pieces.append(delta.reshape(-1))
        if start + deltas[0].numel() >= self.numel:  # the last block: draw and sum over the whole tensor
            whole = [torch.cat(p).view(self.shape) for p in self.pieces]
            self.pieces = []
            self.masks = [self.draw_whole(i, d) if self.drops[i] else None for i, d in enumerate(whole)]
            for i, delta in enumerate(whole):
                if self.l1[i] is not None:
                    self.accumulate(i, 0, delta, self.masks[i])  # type: ignore[arg-type]

    def draw_whole(self, i: int, delta: torch.Tensor) -> torch.Tensor:
        if self.params[i]["density"] <= 0:  # nothing kept, nothing drawn
            return torch.zeros(delta.shape, dtype=self.work, device=self.device)
        if not self.small:
            return self.draw_rows(i, 0, delta)
        probability = ranked(delta.to(self.work).abs(), self.tables[i], self.row_length)  # type: ignore[arg-type]
        return torch.bernoulli(probability, generator=self.generator).view(delta.shape).to(self.device)

    def draw_rows(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        bounds = ranked(delta.abs(), randstream.thresholds(self.tables[i]), self.row_length)  # type: ignore[arg-type]
        lanes = self.streams[i].lanes(start, delta.numel()).view(bounds.shape)  # type: ignore[union-attr]
        return torch.lt(lanes, bounds, out=torch.empty(bounds.shape, dtype=self.work)).view(delta.shape).to(self.device)

    def keep(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        if self.gather:
            return self.masks[i].reshape(-1)[start : start + delta.numel()].view(delta.shape)  # type: ignore[index]
        return self.draw_rows(i, start, delta)


def keep_probabilities(n: int, density: float, epsilon: float, dtype: torch.dtype) -> torch.Tensor:
    """The keep probability of the entries of magnitude rank 1..n of a row, computed in ``dtype``
    with mergekit's rounding: min-max normalised rank, then density − ε + 2ε·r."""
    ranks = torch.arange(n).to(dtype) + 1  # rounded before the + 1, as mergekit's argsort ranks are
    if n > 1:
        low, high = ranks.min(), ranks.max()
        position = ((ranks - low) / (high - low)).clamp(0, 1)
    else:
        position = torch.zeros_like(ranks)
    return (density - epsilon) + position * 2 * epsilon


def ranked(magnitude: torch.Tensor, table: torch.Tensor, n: int) -> torch.Tensor:
    """``table[rank]`` for every entry, rank being its place by magnitude within its row of ``n``."""
    rows = magnitude.reshape(-1, n)
    order = magnitude_order(rows)
    return torch.empty(rows.shape, dtype=table.dtype).scatter_(1, order, table.expand(rows.shape))


def magnitude_order(magnitude: torch.Tensor) -> torch.Tensor:
    """Per row, the column indices by increasing magnitude, equal ones by index (a stable sort).

    Non-negative floats order like their bit patterns, so numpy's radix sort of 16-bit keys does
    the work (about ten times faster than ``torch.sort``); 32-bit keys take two radix passes.
    """
    bits = magnitude.detach().cpu().contiguous()
    if bits.element_size() == 2:
        return torch.from_numpy(np.argsort(bits.view(torch.int16).numpy().view(np.uint16), axis=-1, kind="stable"))
    if bits.element_size() == 4:
        keys = bits.view(torch.int32).numpy().view(np.uint32)
        order = np.argsort((keys & 0xFFFF).astype(np.uint16), axis=-1, kind="stable")
        high = np.take_along_axis((keys >> 16).astype(np.uint16), order, axis=-1)
        return torch.from_numpy(np.take_along_axis(order, np.argsort(high, axis=-1, kind="stable"), axis=-1))
    return torch.from_numpy(np.argsort(bits.view(torch.int64).numpy(), axis=-1, kind="stable"))


def row_sums(values: torch.Tensor, rows: int) -> torch.Tensor:
    """The sum of each of the ``rows`` rows of ``values`` in its dtype, as float64 (torch accumulates
    16-bit floats in float32 and rounds each row's sum once; mergekit rounds its one whole sum once).

    Each row is reduced by one thread, as a whole (or in fixed pieces when long), so the sums do
    not depend on the thread count or on the other rows of the block.
    """
    matrix = values.reshape(rows, -1)
    if matrix.shape[1] <= _ROW_PIECE:
        return matrix.sum(dim=1).double()
    cut = matrix.shape[1] // _ROW_PIECE * _ROW_PIECE
    pieces = matrix[:, :cut].reshape(rows, -1, _ROW_PIECE).sum(dim=2).double().sum(dim=1)
    return pieces + matrix[:, cut:].sum(dim=1).double()


def dare_linear_blocks(meta: MergeInputs) -> DareBlocks:
    """The block merger of ``dare_linear`` (x-mergehub ``blocks``)."""
    return DareBlocks(meta, None)


def dare_ties_blocks(meta: MergeInputs) -> DareBlocks:
    """The block merger of ``dare_ties``."""
    return DareBlocks(meta, "sum")


def della_blocks(meta: MergeInputs) -> DellaBlocks:
    """The block merger of ``della``."""
    return DellaBlocks(meta, "sum")


def della_linear_blocks(meta: MergeInputs) -> DellaBlocks:
    """The block merger of ``della_linear``."""
    return DellaBlocks(meta, None)
