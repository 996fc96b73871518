"""A base model's tensor reader with a LoRA adapter applied as tensors are read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergehub.dtypes import to_torch
from mergehub.lora import Adapter, Factors

if TYPE_CHECKING:
    import torch

    from mergehub.models import TensorHeader, TensorReader

#: Rows of a delta computed by one matrix product. The grid depends on the tensor's shape only,
#: so a row block and a whole read compute every element with the same product: same bytes.
CHUNK = 64


class LoraReader:
    """A base reader with an adapter applied: same names and headers, merged values.

    Precision, as PEFT's ``merge_and_unload()`` on CPU with its default adapter upcasting:
    the factors are cast to the working dtype (float64 for a float64 base, float32
    otherwise: PEFT stores the factors in the base's dtype and upcasts half precision to
    float32); ``delta = (B A) · scale`` is computed in it (the product first, then the
    scale, as PEFT does); a linear layer's delta is added to ``W`` in that dtype and the sum
    rounded once to the base's dtype, while an embedding's delta is first rounded to the
    base's dtype and added there (PEFT's two merge paths differ so; the results only differ
    for half-precision bases). Each delta row comes from a product over a fixed grid of
    ``CHUNK`` rows, so its bytes do not depend on which rows were asked for; with float32
    inputs they equal PEFT's within float32 rounding (in practice bit for bit).
    """

    def __init__(self, base: TensorReader, adapter: Adapter):
        adapter.check(base)
        self.base = base
        self.adapter = adapter
        self._cached: tuple[str, torch.Tensor, torch.Tensor] | None = None  # the last module's factors

    def tensor_names(self) -> list[str]:
        return self.base.tensor_names()

    def header(self, name: str) -> TensorHeader:
        return self.base.header(name)

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
        delta = self._delta(factors, start, stop)
        if factors.embedding:
            return original + delta.to(original.dtype)
        return (original.to(delta.dtype) + delta).to(original.dtype)

    def _original(self, name: str, rows: tuple[int, int] | None) -> torch.Tensor:
        """The base's rows, or the adapter's replacement for them, in the base's dtype."""
        source = self.adapter.replacements.get(name)
        if source is None:
            return self.base.read(name) if rows is None else self.base.read_rows(name, *rows)
        weights = self.adapter.weights
        tensor = weights.get(source) if rows is None else weights.rows(source, *rows)
        return tensor.to(to_torch(self.header(name).dtype))

    def _delta(self, f: Factors, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of ``scale · B A`` (or of its transpose), never more than a chunk extra."""
        import torch

        a, b = self._factors(f, self.header(f"{f.module}.weight").dtype)
        grid = chunk_grid(a.shape[1] if f.transposed else b.shape[0], start, stop)
        if not grid:
            return torch.empty((0, b.shape[0] if f.transposed else a.shape[1]), dtype=a.dtype)
        pieces = [((b @ a[:, lo:hi]).T if f.transposed else b[lo:hi] @ a) * f.scale for lo, hi in grid]
        offset = grid[0][0]
        return torch.cat(pieces)[start - offset:stop - offset]

    def _factors(self, f: Factors, base_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if self._cached is None or self._cached[0] != f.module:
            work = torch.float64 if base_dtype == "float64" else torch.float32
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
