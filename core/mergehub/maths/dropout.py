"""Random dropping of task-vector entries in blocks: DARE (uniform keep probability) and DELLA
(keep probability rising with the magnitude rank within each row).

Each model's keep mask is a function of the element's flat index (see :mod:`mergehub.maths.randstream`),
so a block's mask is drawn again, identically, in every pass instead of being stored. With
``rescale``, pass 0 sums ‖δᵢ‖₁ and ‖dᵢ‖₁ per row (:func:`row_sums`, into a float64 buffer of one
value per row, added up exactly with :func:`math.fsum`), so the factor does not depend on where
the blocks start; the merge pass draws the masks again, rescales and combines
(:func:`mergehub.maths.taskarith.combine`). Arithmetic stays in the inputs' dtype (float32 for float16,
whose masks mergekit draws and applies in float32).

Threads: a block is cut into pieces of whole rows (:data:`PIECE_ELEMENTS`) and the pieces are
worked through, start to end (task vectors, masks, row sums, combining), by a pool of
the workers of :mod:`mergehub.maths.workers` while the calling thread waits for them. Most of the work is numpy
(PCG64 lanes, DELLA's per-row sort and scatter by rank), which has no threads of its own, so
this is what puts DARE and DELLA on every core. Each worker runs torch single-threaded (the pool
sets its threads' intra-op count to 1 when it starts them, then restores the caller's setting):
nested OpenMP teams on every worker would oversubscribe the cores and wait at each other's
barriers. A piece's results depend only on (seed, model, flat indices) and go to its own rows of
the sums, every worker reads its own copy of a lane generator
(:class:`~mergehub.maths.randstream.LaneStream`), and merged pieces are joined in row order, so
the bytes do not depend on the number of threads. Shared state a piece reads (rescale factors,
the masks of small and 1-D tensors) is made on the calling thread before the pieces start.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from mergehub.maths import randstream, sparsify, workers
from mergehub.maths.packedmasks import PackedMasks
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
def as_mask(keep: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A numpy bool mask as a 0/1 uint8 tensor shaped and placed like ``like`` (multiplying by it
    is multiplying by 0.0 or 1.0, without a conversion kernel)."""
    return torch.from_numpy(keep.view(np.uint8)).view(like.shape).to(like.device)


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
        self.cached = PackedMasks(self.numel * drawn, MASK_CACHE_BYTES)

    def keep(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        """Model ``i``'s keep mask (0/1) for the block of ``delta`` starting at flat ``start``."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Make, on the calling thread, what the pieces of a block read (the workers must not race
        to make it)."""

    def block_deltas(self, block: MergeInputs) -> tuple[torch.Tensor, list[torch.Tensor], list[dict], int]:
        """The base, the task vectors δᵢ and parameters of a block, and the flat index it starts at."""
        base, others, params = split_base(block)
        return base, [torch.sub(x, base) for x in others], params, block.offset * self.row_elements

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        self.prepare()
        workers.each(self.collect_piece, self.pieces_of(block))

    def collect_piece(self, piece: MergeInputs) -> None:
        """Pass 0 over one piece: draw each model's mask and sum its rows before and after dropping."""
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
        self.cached.put((i, start), keep)

    def recall(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        """Model ``i``'s keep mask for a piece: the one the rescale pass remembered, else drawn again."""
        kept = self.cached.take((i, start), delta)
        return self.keep(i, start, delta) if kept is None else kept

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
        self.prepare()
        self.rescale_factors()
        merged = workers.each(self.merge_piece, self.pieces_of(block))
        return merged[0] if len(merged) == 1 else torch.cat(merged)

    def merge_piece(self, block: MergeInputs) -> torch.Tensor:
        """The output rows of one piece: drop, rescale and combine its task vectors."""
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

    def prepare(self) -> None:
        if self.small:
            self.small_masks()

    def keep(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        n = delta.numel()
        if self.small:
            return self.small_masks()[i].reshape(-1)[start : start + n].view(delta.shape)  # type: ignore[union-attr]
        lanes = self.streams[i].lanes_array(start, n)  # type: ignore[union-attr]
        return as_mask(randstream.keep_lanes(lanes, self.bounds[i]), delta)

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
        self.bounds = [None if t is None else randstream.thresholds(t).numpy() for t in self.tables]
        piece_rows = max(1, PIECE_ELEMENTS // self.row_elements) * (self.row_elements // self.row_length)
        self.tiles = [None if b is None or self.gather else np.tile(b, piece_rows) for b in self.bounds]

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
        """Model ``i``'s keep mask for whole rows of ``delta`` starting at flat ``start``: each entry's
        lane against the bound of its magnitude rank."""
        keys = magnitude_keys(delta.abs().reshape(-1, self.row_length))
        bounds = by_rank(keys, self.tiled(i, keys.shape[0]))
        return as_mask(randstream.keep_lanes(self.streams[i].lanes_array(start, keys.size), bounds), delta)  # type: ignore[union-attr]

    def keep(self, i: int, start: int, delta: torch.Tensor) -> torch.Tensor:
        if self.gather:
            return self.masks[i].reshape(-1)[start : start + delta.numel()].view(delta.shape)  # type: ignore[index]
        return self.draw_rows(i, start, delta)

    def tiled(self, i: int, rows: int) -> np.ndarray:
        """Model ``i``'s lane bounds by rank, repeated for (at least) ``rows`` rows: made once for
        whole pieces, before any worker reads them; only a 1-D tensor's whole row is tiled here."""
        tile = self.tiles[i]
        return tile if tile is not None and tile.size >= rows * self.row_length else np.tile(self.bounds[i], rows)  # type: ignore[arg-type]


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

    Non-negative floats order like their bit patterns, so the sort is of integer keys (see
    :func:`sorted_columns`), many times faster than ``torch.sort``.
    """
    return torch.from_numpy(sorted_columns(magnitude_keys(magnitude)).astype(np.int64, copy=False))


def magnitude_keys(magnitude: torch.Tensor) -> np.ndarray:
    """The bit patterns of ``magnitude`` (on the CPU) as integers that order like the values when
    they are non-negative: unsigned for 16 and 32 bits, int64 for 64."""
    bits = magnitude.detach().cpu().contiguous()
    if bits.element_size() == 2:
        return bits.view(torch.int16).numpy().view(np.uint16)
    if bits.element_size() == 4:
        return bits.view(torch.int32).numpy().view(np.uint32)
    return bits.view(torch.int64).numpy()


def sorted_columns(keys: np.ndarray) -> np.ndarray:
    """Per row of ``keys``, the column indices by increasing key, equal keys by column.

    Rather than a stable argsort (numpy's radix sort: two passes for 16 bits, four for 32), each
    key is sorted with its column in the low bits, ``key << b | column``: these are distinct, so
    any sort orders them the same way, and numpy's plain sort of 32- or 64-bit integers is a SIMD
    sort, about twice as fast. Keys too wide for that (64-bit) fall back to the stable argsort.
    """
    n = keys.shape[-1]
    shift = max(1, (n - 1).bit_length())
    width = 8 * keys.itemsize + shift
    if width > 64 or keys.dtype.kind != "u":
        return np.argsort(keys, axis=-1, kind="stable")
    dtype = np.uint32 if width <= 32 else np.uint64
    composite = np.left_shift(keys, shift, dtype=dtype)
    composite |= np.arange(n, dtype=dtype)
    composite.sort(axis=-1)
    composite &= dtype((1 << shift) - 1)
    return composite


def by_rank(keys: np.ndarray, tiled: np.ndarray) -> np.ndarray:
    """``table[rank]`` for every entry of the rows of ``keys`` (flat), rank being its place by key
    within its row and ``tiled`` the table repeated once per row."""
    rows, n = keys.shape
    index = sorted_columns(keys)
    if index.dtype == np.uint32 and rows * n >= 1 << 32:
        index = index.astype(np.uint64)
    index += (np.arange(rows, dtype=index.dtype) * n)[:, None]  # row r's columns → flat indices
    flat = torch.from_numpy(index.reshape(-1).astype(np.int64, copy=False))  # torch's scatter beats numpy's
    values = torch.from_numpy(tiled[: rows * n])
    return torch.empty(rows * n, dtype=values.dtype).scatter_(0, flat, values).numpy()


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
