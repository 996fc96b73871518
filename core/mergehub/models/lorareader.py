"""A base model's tensor reader with a LoRA adapter applied as tensors are read."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from mergehub.common.dtypes import FLOATING, to_torch
from mergehub.models.lora import Adapter, Factors

if TYPE_CHECKING:
    import torch

    from mergehub.plugin.specs import TensorHeader, TensorReader

#: Rows of a delta computed by one matrix product. The grid depends on the tensor's shape only,
#: so a row block and a whole read compute every element with the same product: same bytes.
CHUNK = 64


class LoraReader:
    """A base reader with an adapter applied: same names and shapes, merged values.

    The result is what PEFT's ``merge_and_unload()`` gives on CPU, with its default adapter
    upcasting, for the base *loaded in* ``dtype`` (``from_pretrained(base, dtype=...)``):
    ``dtype`` is the recipe's ``dtype``, its working precision, so the adapter is applied in
    it, not in the dtype the checkpoint happens to be stored in. Without one (``None``) each
    tensor is loaded in its own stored dtype, as PEFT loads a checkpoint by default.

    A tensor the adapter changes is read in that load dtype (its header says so; the base's
    weights are cast to it first, as loading casts them) and the adapter is applied as PEFT
    applies it: the factors are cast to the delta dtype (float64 for a float64 load, float32
    otherwise: PEFT stores the factors in the model's dtype and upcasts half precision to
    float32); ``delta = (B A) · scale`` is computed in it (the product first, then the scale,
    as PEFT does); a linear layer's delta is added to ``W`` in that dtype and the sum rounded
    once to the load dtype, while an embedding's delta is first rounded to the load dtype and
    added there (PEFT's two merge paths differ so; the results only differ for half-precision
    loads). So a bfloat16 checkpoint in a ``dtype: float32`` recipe gets ``W + scale · B A``
    in float32, unrounded, and a float32 checkpoint in a ``dtype: bfloat16`` recipe is
    rounded to bfloat16, has the float32 delta added and is rounded again, as PEFT on the base
    loaded in bfloat16 does. Each delta row comes from a product over a fixed grid of
    ``CHUNK`` rows, so its bytes do not depend on which rows were asked for; with float32
    inputs they equal PEFT's within float32 rounding (in practice bit for bit).
    """

    def __init__(self, base: TensorReader, adapter: Adapter, dtype: str | None = None):
        adapter.check(base)
        self.base = base
        self.adapter = adapter
        self.dtype = dtype if dtype in FLOATING else None  # a non-floating recipe dtype does not apply to weights
        self._cached: tuple[str, torch.Tensor, torch.Tensor] | None = None  # the last module's factors

    def tensor_names(self) -> list[str]:
        return self.base.tensor_names()

    def header(self, name: str) -> TensorHeader:
        header = self.base.header(name)
        changed = name in self.adapter.deltas or name in self.adapter.replacements
        if changed and self.dtype is not None and header.dtype in FLOATING and header.dtype != self.dtype:
            return replace(header, dtype=self.dtype)  # what read() gives: the tensor loaded in the working dtype
        return header

    def read(self, name: str) -> torch.Tensor:
        shape = self.header(name).shape
        if name not in self.adapter.deltas and name not in self.adapter.replacements:
            return self.base.read(name)
        return self.read_rows(name, 0, shape[0]) if shape else self._original(name, None)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        original = self._original(name, (start, stop))
        factors = self.adapter.deltas.get(name)
        if factors is None:
            return original
        delta = self._delta(factors, start, stop, original.dtype)
        if factors.embedding:
            return original + delta.to(original.dtype)
        return (original.to(delta.dtype) + delta).to(original.dtype)

    def _original(self, name: str, rows: tuple[int, int] | None) -> torch.Tensor:
        """The base's rows, or the adapter's replacement for them, in the load dtype (the header's)."""
        dtype = to_torch(self.header(name).dtype)
        source = self.adapter.replacements.get(name)
        if source is None:
            tensor = self.base.read(name) if rows is None else self.base.read_rows(name, *rows)
        else:
            weights = self.adapter.weights
            tensor = weights.get(source) if rows is None else weights.rows(source, *rows)
        return tensor.to(dtype)

    def _delta(self, f: Factors, start: int, stop: int, load: torch.dtype) -> torch.Tensor:
        """Rows ``start:stop`` of ``scale · B A`` (or of its transpose), never more than a chunk extra."""
        import torch

        a, b = self._factors(f, load)
        grid = chunk_grid(a.shape[1] if f.transposed else b.shape[0], start, stop)
        if not grid:
            return torch.empty((0, b.shape[0] if f.transposed else a.shape[1]), dtype=a.dtype)
        pieces = [((b @ a[:, lo:hi]).T if f.transposed else b[lo:hi] @ a) * f.scale for lo, hi in grid]
        offset = grid[0][0]
        return torch.cat(pieces)[start - offset:stop - offset]

    def _factors(self, f: Factors, load: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if self._cached is None or self._cached[0] != f.module:
            work = torch.float64 if load == torch.float64 else torch.float32
            weights = self.adapter.weights
            self._cached = (f.module, weights.get(f.a).to(work), weights.get(f.b).to(work))
        return self._cached[1], self._cached[2]

    def close(self) -> None:
        self._cached = None
        self.adapter.close()
        self.base.close()


def chunk_grid(total: int, start: int, stop: int) -> list[tuple[int, int]]:
    """The fixed chunks of ``range(total)`` that cover rows ``start:stop``.

    Chunks are ``CHUNK`` rows long from 0; a last chunk of a single row joins the one before,
    since a one-row product takes another (matrix-vector) path in BLAS and rounds differently.
    """
    bounds = list(range(0, total, CHUNK)) + [total]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > start and lo < stop]
