"""Exact top-k by magnitude over a tensor seen in blocks, without sorting.

Non-negative floats order like their bit patterns read as integers. For 16-bit floats
(bfloat16, float16) one histogram of the 65536 patterns finds the k-th largest magnitude
in a single pass; for 32-bit values a second pass refines the high 16 bits with the low
16. Memory is two 65536-bin histograms, time is linear. Among equal magnitudes at the
cut-off the lowest flat indices are kept, so the result does not depend on how the tensor
is split into blocks nor on the number of threads.
"""

from __future__ import annotations

import torch

BINS = 1 << 16
SHORT = (torch.bfloat16, torch.float16)


def magnitude_bits(values: torch.Tensor) -> torch.Tensor:
    """|values| as order-preserving integers: the 16-bit pattern of 16-bit floats, else float32's."""
    if values.dtype in SHORT:
        return values.abs().reshape(-1).view(torch.int16).to(torch.int32)
    return values.abs().float().reshape(-1).view(torch.int32)


class TopK:
    """Selects the ``k`` largest magnitudes of a tensor seen block by block, in row order.

    Call ``collect`` for every block in pass 0 and, for 32-bit values, again in pass 1
    (``passes_for(dtype)``), then ``mask`` for every block in order.
    """

    def __init__(self, k: int):
        self.k = k
        self.high = torch.zeros(BINS, dtype=torch.int64)
        self.low = torch.zeros(BINS, dtype=torch.int64)
        self.short: bool | None = None
        self.bin: int | None = None
        self.above = 0
        self.threshold: int | None = None
        self.ties_wanted = 0
        self.ties_seen = 0

    @staticmethod
    def passes_for(dtype: torch.dtype) -> int:
        return 1 if dtype in SHORT else 2

    def collect(self, pass_index: int, values: torch.Tensor) -> None:
        self.short = values.dtype in SHORT
        bits = magnitude_bits(values)
        if pass_index == 0:
            self.high += torch.bincount(bits if self.short else bits >> 16, minlength=BINS)[:BINS]
            return
        if self.bin is None:
            self.bin, self.above = _find(self.high, self.k)
        inside = bits[(bits >> 16) == self.bin] & 0xFFFF
        self.low += torch.bincount(inside, minlength=BINS)[:BINS]

    def finish(self) -> None:
        if self.short:
            value, above = _find(self.high, self.k)
            self.threshold, self.ties_wanted = value, self.k - above
            return
        low, above_in_bin = _find(self.low, self.k - self.above)
        self.threshold = (self.bin << 16) | low  # type: ignore[operator]
        self.ties_wanted = self.k - self.above - above_in_bin

    def mask(self, values: torch.Tensor) -> torch.Tensor:
        """Which entries of this block (the next one in row order) are among the k largest."""
        if self.threshold is None:
            self.finish()
        bits = magnitude_bits(values)
        keep = bits > self.threshold
        room = self.ties_wanted - self.ties_seen
        if room > 0:  # once every wanted tie is kept, later equal values are simply dropped
            tied = (bits == self.threshold).nonzero().reshape(-1)
            keep[tied[:room]] = True
            self.ties_seen += tied.numel()
        return keep.reshape(values.shape)


def _find(histogram: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value, and how many values lie in higher bins."""
    from_top = torch.flip(histogram, [0]).cumsum(0)
    index = int(torch.searchsorted(from_top, torch.tensor(k)))
    above = int(from_top[index - 1]) if index > 0 else 0
    return BINS - 1 - index, above
