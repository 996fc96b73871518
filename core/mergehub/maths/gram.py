"""Block merging for methods whose output is a linear combination of their inputs.

slerp, nuslerp, multislerp, karcher and model_stock all produce Y = [B +] Σₖ cₖ·vₖ, where the
vectors vₖ are the inputs (or their differences from the base B) and the coefficients cₖ
depend only on the Gram matrix Gᵢⱼ = vᵢ·vⱼ: norms, cosines, and every vector built along the
way (a mean direction, a tangent, a Karcher iterate) are linear combinations of the vₖ, so
their dot products follow from G. :class:`GramBlocks` therefore reads a tensor twice: pass 0
sums G over row blocks, then each output block is formed from the input block. Per-row
(``rows``) and per-column (``columns``) statistics work the same way, one G per vector.

Exactness whatever the blocks: each row's Gram matrix is one batched matmul per row (the same
arithmetic for a row wherever the block starts), and the rows' matrices are added up in
float64 strictly in row order (a cumulative sum, never a tree whose shape follows the blocks).
Per-column sums fold the float64 products row after row the same way. Work happens in chunks
of :data:`CHUNK_ELEMENTS`, in float32 (float64 for float64 inputs), in reused buffers.

Methods the reference computes in the inputs' dtype (nuslerp, multislerp, model_stock) use
:class:`ExactBlocks` instead, which sums the reference's rounded elementwise terms and replays its
elementwise operations (see below).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch

from mergehub.maths.tensormath import working_dtype
from mergehub.plugin.specs import MergeInputs

Mode = Literal["flat", "rows", "columns"]
#: (R, k, k) float64 Gram matrices -> (R, k) coefficients, or (R, 1): one coefficient for the sum.
Solve = Callable[[torch.Tensor], torch.Tensor]

#: Rows are processed in chunks of about this many elements: a few float32 copies of a chunk
#: stay in the CPU's L2 cache, and the scratch memory stays at a few MB whatever the block.
CHUNK_ELEMENTS = 1 << 17


def matrix_view(tensor: torch.Tensor, mode: Mode) -> torch.Tensor:
    """The 2-D view the statistics run over: a 1-D tensor is a column of one-element rows
    (so that blocks of its elements are blocks of rows); ``rows`` keeps the last dim's vectors whole."""
    if tensor.dim() <= 1:
        return tensor.reshape(-1, 1)
    if mode == "rows":
        return tensor.reshape(-1, tensor.shape[-1])
    return tensor.reshape(tensor.shape[0], -1)


def symmetric(gram: torch.Tensor) -> torch.Tensor:
    """``gram`` with its upper triangle mirrored, so that Gᵢⱼ and Gⱼᵢ are the same number."""
    upper = torch.triu(gram)
    return upper + torch.triu(gram, 1).transpose(-1, -2)


def row_gram(stacked: torch.Tensor) -> torch.Tensor:
    """Every row's Gram matrix, (rows, k, k), from vectors stacked as (rows, k, cols).

    One batched matmul reads each element once for all k(k+1)/2 products; a row's result does
    not depend on the other rows of the batch (checked in the tests). Only the upper triangle
    is used (see :func:`symmetric`), so that vᵢ·vⱼ is one number whatever the order of i and j.
    """
    return torch.bmm(stacked, stacked.transpose(1, 2))


class Stack:
    """Reused working-dtype copies of a chunk of k vectors, stacked (rows, k, cols) for :func:`row_gram`."""

    def __init__(self, work: torch.dtype):
        self.work = work
        self.vectors: torch.Tensor | None = None
        self.base: torch.Tensor | None = None

    def load(self, tensors: list[torch.Tensor], base: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunks of ``tensors`` (each (rows, cols)) in the working dtype, minus ``base`` when given."""
        rows, cols = tensors[0].shape
        if self.vectors is None or self.vectors.shape[0] < rows or self.vectors.shape[1:] != (len(tensors), cols):
            self.vectors = torch.empty(rows, len(tensors), cols, dtype=self.work, device=tensors[0].device)
            self.base = torch.empty(rows, cols, dtype=self.work, device=tensors[0].device) if base is not None else None
        stacked = self.vectors[:rows]
        base_work = None
        if base is not None:
            base_work = self.base[:rows].copy_(base)  # type: ignore[index]
        for k, tensor in enumerate(tensors):
            stacked[:, k].copy_(tensor)
            if base_work is not None:
                stacked[:, k].sub_(base_work)
        return stacked, base_work


def combine(stacked: torch.Tensor, terms: list, base: torch.Tensor | None, out: torch.Tensor) -> None:
    """out = [base +] Σₖ cₖ·vₖ in the working dtype, then cast to ``out``'s dtype.

    ``terms`` are the k coefficients, each a number or a tensor that broadcasts against a
    (rows, cols) chunk (per row or per column); a single term multiplies the plain sum Σₖ vₖ.
    Each term is multiplied and then added (no fused multiply-add), so equal coefficients give a
    result symmetric in the vₖ. The vectors in ``stacked`` are overwritten.
    """
    acc = stacked[:, 0]
    if len(terms) == 1:  # one coefficient: sum the vectors, multiply once
        for i in range(1, stacked.shape[1]):
            acc.add_(stacked[:, i])
        acc.mul_(terms[0])
    else:
        acc.mul_(terms[0])
        for i in range(1, stacked.shape[1]):
            acc.add_(stacked[:, i].mul_(terms[i]))
    if base is not None:
        acc.add_(base)
    out.copy_(acc)


class Fold:
    """Σ over rows of per-row values, in float64 and strictly in row order (block-independent)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        values = values.to(torch.float64)
        start = self.total if self.total is not None else torch.zeros_like(values[0])
        self.total = torch.cat([start.unsqueeze(0), values]).cumsum(0)[-1]


class GramBlocks:
    """A :class:`~mergehub.maths.blocks.BlockMerge`: Y = [B +] Σₖ cₖ·vₖ with c = ``solve`` (Gram matrices).

    ``vectors`` are the indices of the inputs vₖ; with ``base``, vₖ = Xₖ − B and B is added back.
    ``mode``: ``flat`` (one Gram matrix for the whole tensor), ``rows`` (one per vector along the
    last dim: no statistics pass) or ``columns`` (one per vector along dim 0). A tensor of fewer
    than two dims is one vector in every mode.
    """

    def __init__(self, meta: MergeInputs, vectors: list[int], base: int | None, mode: Mode, solve: Solve):
        shape = meta.full_shape if meta.full_shape is not None else tuple(meta.tensors[0].shape)
        self.mode: Mode = mode if len(shape) >= 2 else "flat"
        self.passes = 0 if self.mode == "rows" else 1
        self.vectors, self.base, self.solve = vectors, base, solve
        self.stack = Stack(working_dtype(meta.tensors[0].dtype))
        self.fold = Fold()
        self.terms: list | None = None

    def chunks(self, block: MergeInputs, elements: int = CHUNK_ELEMENTS
               ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
        """(rows, stacked vectors, base) for each chunk of ``block``, in row order."""
        mats = [matrix_view(t, self.mode) for t in block.tensors]
        rows, cols = mats[0].shape
        step = max(1, elements // max(1, cols))
        for start in range(0, rows, step):
            span = slice(start, min(rows, start + step))
            base = mats[self.base][span] if self.base is not None else None
            stacked, base_work = self.stack.load([mats[i][span] for i in self.vectors], base)
            yield span, stacked, base_work

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        if self.mode == "flat":
            for _, stacked, _ in self.chunks(block):
                self.fold.add(row_gram(stacked))
            return
        k = len(self.vectors)  # columns: every element's products, folded down the rows in float64
        for _, stacked, _ in self.chunks(block, CHUNK_ELEMENTS // (4 * k * k)):
            wide = stacked.to(torch.float64)
            self.fold.add(wide.unsqueeze(2) * wide.unsqueeze(1))  # (rows, k, k, cols)

    def gram(self) -> torch.Tensor:
        """The accumulated Gram matrices, (R, k, k) float64: R = 1 (flat) or one per column."""
        k = len(self.vectors)
        total = self.fold.total
        if total is None:  # an empty tensor
            return torch.zeros(1, k, k, dtype=torch.float64)
        return symmetric(total.unsqueeze(0) if self.mode == "flat" else total.permute(2, 0, 1))

    def merge(self, block: MergeInputs) -> torch.Tensor:
        first = block.tensors[self.vectors[0]]
        out = torch.empty(first.shape, dtype=first.dtype, device=first.device)
        if out.numel() == 0:
            return out
        if self.terms is None and self.mode != "rows":
            solved = self.solve(self.gram())
            # flat: plain numbers; columns: one coefficient per column, broadcast down the rows
            self.terms = solved[0].tolist() if self.mode == "flat" else list(solved.to(self.stack.work).unbind(1))
        out_rows = matrix_view(out, self.mode)
        for span, stacked, base_work in self.chunks(block):
            terms = self.terms
            if self.mode == "rows":
                solved = self.solve(symmetric(row_gram(stacked).to(torch.float64))).to(stacked.dtype)
                terms = list(solved.unsqueeze(-1).unbind(1))  # (rows, 1) each
            combine(stacked, terms, base_work, out_rows[span])  # type: ignore[arg-type]
        return out


class Select:
    """A :class:`~mergehub.maths.blocks.BlockMerge` whose output is one of its inputs, unchanged."""

    passes = 0

    def __init__(self, index: int):
        self.index = index

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        pass

    def merge(self, block: MergeInputs) -> torch.Tensor:
        return block.tensors[self.index]


def norms(gram: torch.Tensor) -> torch.Tensor:
    """‖vₖ‖ from the diagonal of (…, k, k) Gram matrices."""
    return torch.diagonal(gram, dim1=-2, dim2=-1).clamp(min=0).sqrt()


def length(gram: torch.Tensor, c: torch.Tensor) -> float:
    """‖Σₖ cₖ·vₖ‖ from one (k, k) Gram matrix (a square that rounding made negative counts as 0)."""
    return math.sqrt(max(float(c @ gram @ c), 0.0))


# --- Reference-precision mergers ------------------------------------------------------------
#
# nuslerp, multislerp and model_stock compute in the inputs' dtype in the reference: each
# statistic (a norm, a dot product of rounded products, a cosine) is a float32-accumulated sum
# rounded to that dtype, and every elementwise step rounds too. The mergers below replay that
# arithmetic on row chunks: a pass sums the elementwise terms the reference sums (computed in the
# inputs' dtype, exactly as it computes them), the scalar chain then runs on small tensors of the
# inputs' dtype with the reference's operations, and the output is formed with its elementwise
# operations. The sums are float32 over fixed 4096-element segments and float64 over segments
# and rows, so they round to the reference's values unless they sit on a rounding boundary.

#: Row sums add float32 partial sums of segments of this many elements (fewer than torch's
#: parallel grain, so a segment is always summed by one thread in one order).
SEGMENT = 4096


#: A term a statistic sums along each vector: (values, squared), Σ values² when squared (a norm).
Term = tuple[torch.Tensor, bool]


def row_sums(terms: list[Term], acc: torch.dtype) -> torch.Tensor:
    """(rows, cols) terms -> (rows, m) float64: each term's Σ along its rows, the same for a row wherever its block starts.

    Segments of :data:`SEGMENT` elements are summed in ``acc`` (the reference's accumulator;
    a squared term as a norm, read once), the segments' sums then in float64 in order: a row's
    value never depends on the other rows or on the thread count.
    """
    columns = []
    for values, squared in terms:
        rows, cols = values.shape
        full = cols // SEGMENT * SEGMENT
        pieces = [values[:, :full].reshape(rows, -1, SEGMENT)] if full else []
        if full < cols:
            pieces.append(values[:, full:].unsqueeze(1))
        if squared:
            parts = [torch.linalg.vector_norm(x, dim=-1, dtype=acc).to(torch.float64).square() for x in pieces]
        else:
            parts = [x.sum(-1, dtype=acc).to(torch.float64) for x in pieces]
        segments = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        columns.append(segments.cumsum(-1)[:, -1] if segments.shape[-1] > 1 else segments[:, 0])
    return torch.stack(columns, 1)


def rounded(sums: torch.Tensor, dtype: torch.dtype, sqrt: bool = False) -> torch.Tensor:
    """A float64 sum as the reference has it: its float32 accumulator (optionally its square root) in ``dtype``."""
    value = sums.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return (value.sqrt() if sqrt else value).to(dtype)


class ExactBlocks:
    """A :class:`~mergehub.maths.blocks.BlockMerge` that replays a whole-tensor computation in the inputs' dtype.

    Subclasses give, per pass, the elementwise ``terms`` whose sums the reference takes over each
    vector (m :data:`Term` chunks, computed from ``vectors``, the inputs' chunks in the inputs'
    dtype), ``finish`` turns the m sums per vector into the statistics the next pass needs, and
    ``output`` forms a chunk of the result. ``mode`` is as for :class:`GramBlocks`; ``rows``
    needs no pass: each chunk's rows are finished before its output is formed. ``stat`` reshapes
    a per-vector statistic so that it broadcasts against a (rows, cols) chunk.
    """

    stages = 1

    def __init__(self, meta: MergeInputs, mode: Mode):
        shape = meta.full_shape if meta.full_shape is not None else tuple(meta.tensors[0].shape)
        self.mode: Mode = mode if len(shape) >= 2 else "flat"
        self.dtype = meta.tensors[0].dtype
        self.acc = torch.float64 if self.dtype == torch.float64 else torch.float32  # the reference's accumulator
        self.started = 0  # passes collect() has begun
        self.done = 0  # passes whose statistics are finished
        self.passes = 0 if self.mode == "rows" else self.stages
        self.folds = [Fold() for _ in range(self.stages)]

    @property
    def passes(self) -> int:
        """Passes still wanted; asking finishes every pass begun so far (the executor asks between passes)."""
        self.settle(self.started)
        return self._passes

    @passes.setter
    def passes(self, value: int) -> None:
        self._passes = value

    def terms(self, pass_index: int, vectors: list[torch.Tensor]) -> list[Term] | None:
        raise NotImplementedError

    def finish(self, pass_index: int, sums: torch.Tensor) -> None:
        raise NotImplementedError

    def output(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def stat(self, values: torch.Tensor) -> torch.Tensor:
        """(R,) per-vector values -> broadcastable against a (rows, cols) chunk."""
        return values.view(1, -1) if self.mode == "columns" else values.view(-1, 1)

    def chunks(self, block: MergeInputs) -> Iterator[tuple[slice, list[torch.Tensor]]]:
        mats = [matrix_view(t, self.mode) for t in block.tensors]
        rows, cols = mats[0].shape
        step = max(1, CHUNK_ELEMENTS // max(1, cols))
        for start in range(0, rows, step):
            span = slice(start, min(rows, start + step))
            yield span, self.prepare([m[span] for m in mats])

    def prepare(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The vectors a chunk's terms and output are formed from (once per chunk): the inputs by default."""
        return chunks

    def settle(self, upto: int) -> None:
        """Finish the statistics of every pass before ``upto`` (a pass is complete once the next one starts)."""
        while self.done < upto:
            fold = self.folds[self.done]
            total = fold.total
            if total is not None:
                self.finish(self.done, per_vector(total, self.mode))
            self.done += 1

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        self.settle(pass_index)
        self.started = max(self.started, pass_index + 1)
        for _, vectors in self.chunks(block):
            terms = self.terms(pass_index, vectors)
            if terms is None:  # nothing left to compute in this pass
                return
            if self.mode == "flat":
                self.folds[pass_index].add(row_sums(terms, self.acc))
            else:  # columns: every column's terms, folded down the rows in float64
                self.folds[pass_index].add(torch.stack([x.to(torch.float64).square() if squared else x.to(torch.float64)
                                                        for x, squared in terms], 1))

    def merge(self, block: MergeInputs) -> torch.Tensor:
        self.settle(self._passes)
        first = block.tensors[0]
        out = torch.empty(first.shape, dtype=self.dtype, device=first.device)
        if out.numel() == 0:
            return out
        out_rows = matrix_view(out, self.mode)
        for span, vectors in self.chunks(block):
            if self.mode == "rows":
                for pass_index in range(self.stages):
                    terms = self.terms(pass_index, vectors)
                    if terms is not None:
                        self.finish(pass_index, row_sums(terms, self.acc))
            out_rows[span] = self.output(vectors)
        return out


def per_vector(total: torch.Tensor, mode: Mode) -> torch.Tensor:
    """A fold's total as (R, m): R = 1 for a flat sum, one row per column for per-column sums."""
    return total.unsqueeze(0) if mode == "flat" else total.transpose(0, 1)
