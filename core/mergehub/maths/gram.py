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

Threads: a block's chunks are split into runs of consecutive chunks, one per
worker of a pool whose threads run torch single-threaded (:func:`mergehub.maths.workers.in_runs`). Chunks are a few
hundred KB, so an OpenMP team per elementwise op spends more on waking its threads (futex system
calls, context switches) than it saves; a worker per run instead keeps both cores busy with the
whole chain of ops, including the first touch of the memory-mapped inputs. A chunk's arithmetic
is the same on any thread and the Gram matrices are folded in row order on the calling thread,
so the bytes do not depend on the number of threads.

The reference computes nuslerp, multislerp and model_stock in the inputs' dtype, rounding every
statistic and elementwise step to 16 bits for bf16/fp16 models. mergehub computes them like the
others, in float32 from float64 statistics: within one unit in the last place of the formula in
float64, and never further from it than the reference's own result.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Literal

import torch

from mergehub.maths.tensormath import working_dtype
from mergehub.maths.workers import in_runs
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

    def __init__(self, meta: MergeInputs, vectors: list[int], base: int | None, mode: Mode, solve: Solve,
                 refine: bool = False):
        shape = meta.full_shape if meta.full_shape is not None else tuple(meta.tensors[0].shape)
        #: with 16-bit inputs, per-row coefficients come from float64 products: float32 dot products would
        #: leave the coefficient, and so the output, off by more than the output's last bit where terms cancel
        self.refine = refine and meta.tensors[0].dtype in (torch.bfloat16, torch.float16)
        self.mode: Mode = mode if len(shape) >= 2 else "flat"
        self.passes = 0 if self.mode == "rows" else 1
        self.vectors, self.base, self.solve = vectors, base, solve
        self.work = working_dtype(meta.tensors[0].dtype)
        self.local = threading.local()  # each worker thread's Stack
        self.fold = Fold()
        self.terms: list | None = None

    def stack(self) -> Stack:
        """This thread's reused buffers (workers load their chunks concurrently)."""
        stack = getattr(self.local, "stack", None)
        if stack is None:
            stack = self.local.stack = Stack(self.work)
        return stack

    def spans(self, block: MergeInputs, scale: int = 1) -> tuple[list[torch.Tensor], list[slice]]:
        """The 2-D views of ``block``'s tensors and its chunks of rows (``CHUNK_ELEMENTS // scale``), in row order."""
        mats = [matrix_view(t, self.mode) for t in block.tensors]
        rows, cols = mats[0].shape
        step = max(1, CHUNK_ELEMENTS // scale // max(1, cols))
        return mats, [slice(start, min(rows, start + step)) for start in range(0, rows, step)]

    def load(self, mats: list[torch.Tensor], span: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stacked vectors (and the base) of one chunk, in this thread's buffers."""
        base = mats[self.base][span] if self.base is not None else None
        return self.stack().load([mats[i][span] for i in self.vectors], base)

    def collect(self, pass_index: int, block: MergeInputs) -> None:
        if self.mode == "flat":
            mats, spans = self.spans(block)
            grams = in_runs(lambda run: [row_gram(self.load(mats, span)[0]) for span in run], spans)
            if grams:
                self.fold.add(torch.cat(grams))
            return
        k = len(self.vectors)  # columns: every element's products, folded down the rows in float64
        mats, spans = self.spans(block, 4 * k * k)
        for span in spans:
            wide = self.load(mats, span)[0].to(torch.float64)
            self.fold.add(wide.unsqueeze(2) * wide.unsqueeze(1))  # (rows, k, k, cols)

    def gram(self) -> torch.Tensor:
        """The accumulated Gram matrices, (R, k, k) float64: R = 1 (flat) or one per column."""
        k = len(self.vectors)
        total = self.fold.total
        if total is None:  # an empty tensor
            return torch.zeros(1, k, k, dtype=torch.float64)
        return symmetric(total.unsqueeze(0) if self.mode == "flat" else total.permute(2, 0, 1))

    def prepare(self) -> None:
        """Solve for the coefficients once the statistics are complete (on the calling thread)."""
        if self.terms is None and self.mode != "rows":
            solved = self.solve(self.gram())
            # flat: plain numbers; columns: one coefficient per column, broadcast down the rows
            self.terms = solved[0].tolist() if self.mode == "flat" else list(solved.to(self.work).unbind(1))

    def merge(self, block: MergeInputs) -> torch.Tensor:
        first = block.tensors[self.vectors[0]]
        out = torch.empty(first.shape, dtype=first.dtype, device=first.device)
        if out.numel() == 0:
            return out
        self.prepare()
        mats, spans = self.spans(block)
        out_rows = matrix_view(out, self.mode)
        in_runs(lambda run: [self.merge_chunk(mats, span, out_rows[span]) for span in run], spans)
        return out

    def merge_chunk(self, mats: list[torch.Tensor], span: slice, out: torch.Tensor) -> None:
        """One chunk of output rows, written into ``out``."""
        stacked, base_work = self.load(mats, span)
        terms = self.terms
        if self.mode == "rows":
            wide = stacked.to(torch.float64) if self.refine else stacked
            solved = self.solve(symmetric(row_gram(wide).to(torch.float64)))
            terms = list(solved.to(stacked.dtype).unsqueeze(-1).unbind(1))  # (rows, 1) each
        combine(stacked, terms, base_work, out)  # type: ignore[arg-type]


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


def rounded(sums: torch.Tensor, dtype: torch.dtype, sqrt: bool = False) -> torch.Tensor:
    """A float64 sum as a float32 accumulator has it (optionally its square root), in ``dtype``."""
    value = sums.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return (value.sqrt() if sqrt else value).to(dtype)
