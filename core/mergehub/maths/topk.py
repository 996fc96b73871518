"""Exact selection by magnitude rank over a tensor seen in blocks, without sorting.

Non-negative floats order like their bit patterns read as integers. For 16-bit floats
(bfloat16, float16) one histogram of the 65536 patterns finds the k-th largest magnitude
in a single pass; for 32-bit values a second pass refines the high 16 bits with the low
16. Memory is a few 65536-bin histograms, time is linear. Among equal magnitudes at a
cut-off the lowest flat indices rank first, so the result does not depend on how the
tensor is split into blocks nor on the number of threads.

:class:`TopK` keeps the k largest (TIES); :class:`RankWindow` keeps the ranks
``[start, stop)`` (breadcrumbs: the largest outliers and the smallest entries are dropped).
"""

from __future__ import annotations

import math

import torch

BINS = 1 << 16
SHORT = (torch.bfloat16, torch.float16)


def magnitude_bits(values: torch.Tensor) -> torch.Tensor:
    """|values| as order-preserving integers (flattened): int16 patterns of 16-bit floats, else float32's int32.

    Clearing the sign bit is |x| in one integer kernel; 16-bit patterns stay int16, which
    bincount and comparisons handle fastest.
    """
    flat = values.reshape(-1)
    if values.dtype in SHORT:
        return flat.view(torch.int16) & 0x7FFF
    return flat.float().view(torch.int32) & 0x7FFFFFFF


def as_factor(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as 0/1 in ``dtype``: ``x * as_factor(m)`` equals ``x * m`` and runs about twice as fast
    (a bool tensor converts to a float dtype fastest through uint8, and same-dtype products vectorise)."""
    return mask.view(torch.uint8).to(dtype)


def passes_for(dtype: torch.dtype) -> int:
    """Histogram passes needed to place a cut-off exactly: one for 16-bit floats, two otherwise."""
    return 1 if dtype in SHORT else 2


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

    passes_for = staticmethod(passes_for)

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
            tied = bits == self.threshold
            count = int(torch.count_nonzero(tied))
            if count <= room:  # all of this block's ties are wanted: no positions needed
                keep |= tied
            else:
                keep[tied.nonzero().reshape(-1)[:room]] = True
            self.ties_seen += count
        return keep.reshape(values.shape)


class RankWindow:
    """Selects the entries ranked ``start`` .. ``stop - 1`` by descending magnitude (rank 0 is the largest).

    Equal magnitudes rank by flat index, lowest first, as in :class:`TopK`: the window is the
    top ``stop`` minus the top ``start``, both read off one histogram. Call ``collect`` for every
    block in each of ``passes_for(dtype)`` passes, then ``rewind`` and ``mask`` for every block
    in row order.
    """

    def __init__(self, start: int, stop: int):
        self.start, self.stop = max(0, start), max(0, start, stop)
        self.high = torch.zeros(BINS, dtype=torch.int64)
        self.low: dict[int, torch.Tensor] = {}  # 32-bit values: the low-16-bit histogram of each cut's bin
        self.short: bool | None = None
        self.dtype: torch.dtype | None = None
        self.coarse: list[tuple[int, int]] | None = None
        self.cuts: tuple[tuple[int, int], tuple[int, int]] | None = None  # (threshold, ties wanted): start, stop
        self.seen: dict[int, int] = {}

    passes_for = staticmethod(passes_for)

    def collect(self, pass_index: int, values: torch.Tensor) -> None:
        self.short, self.dtype = values.dtype in SHORT, values.dtype
        bits = magnitude_bits(values)
        if pass_index == 0:
            self.high += torch.bincount(bits if self.short else bits >> 16, minlength=BINS)[:BINS]
            return
        if self.coarse is None:
            self.coarse = [_find(self.high, k) for k in (self.start, self.stop)]
            self.low = {b: torch.zeros(BINS, dtype=torch.int64) for b, _ in self.coarse}
        high = bits >> 16
        for b, histogram in self.low.items():
            histogram += torch.bincount(bits[high == b] & 0xFFFF, minlength=BINS)[:BINS]

    def finish(self) -> None:
        top = 0x7FFF if self.short else 0x7FFFFFFF  # above every pattern: with no tie wanted, an empty top set
        cuts = []
        for i, k in enumerate((self.start, self.stop)):
            if k <= 0:
                cuts.append((top, 0))
            elif self.short:
                value, above = _find(self.high, k)
                cuts.append((value, k - above))
            else:
                b, above = self.coarse[i] if self.coarse else _find(self.high, k)
                low, above_in_bin = _find(self.low[b], k - above)
                cuts.append(((b << 16) | low, k - above - above_in_bin))
        self.cuts = (cuts[0], cuts[1])

    def rewind(self) -> None:
        """Start over at the first block (equal magnitudes are ranked by their order of arrival)."""
        self.seen = {}

    def mask(self, values: torch.Tensor) -> torch.Tensor:
        """Which entries of this block (the next one in row order) are ranked inside the window."""
        if self.cuts is None:
            self.finish()
        if self.stop <= self.start:
            return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
        (top, top_ties), (floor, floor_ties) = self.cuts  # top >= floor
        magnitudes = Above(values, floor) if values.dtype in SHORT else Bits(values)
        if self.start == 0:
            keep = magnitudes.between(floor, None)
        elif top > floor:
            resolved = self.seen.get(top, 0) >= top_ties  # every tie the top set wants has gone by
            keep = magnitudes.between(floor, top + 1 if resolved else top)
            if not resolved:
                self._ties(magnitudes, keep, top, top_ties, math.inf)
        else:
            keep = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
        self._ties(magnitudes, keep, floor, top_ties if top == floor else 0, floor_ties)
        return keep.reshape(values.shape)

    def _ties(self, magnitudes: Bits | Above, keep: torch.Tensor, value: int, first: float, stop: float) -> None:
        """Keep the entries equal to ``value`` whose rank among equals (in row order) is in [first, stop)."""
        seen = self.seen.get(value, 0)
        if seen >= stop:
            return
        tied = magnitudes.equal(value)
        count = int(torch.count_nonzero(tied))
        if first <= seen and seen + count <= stop:  # the whole block's ties are inside: no positions needed
            keep |= tied
        elif first < seen + count:  # the block straddles a boundary: only then find the positions
            where = tied.nonzero().reshape(-1)
            lo, hi = max(0, first - seen), min(count, stop - seen)
            keep[where[int(lo):int(hi)]] = True
        self.seen[value] = seen + count

    def magnitude_sums(self) -> tuple[float, float] | None:
        """(Σ|x| over the tensor, Σ|x| over the window), exact from the histogram; None for 32-bit values.

        Each 16-bit pattern is one magnitude, so the sums need no pass over the data, and
        being computed from counts they do not depend on the blocks.
        """
        if not self.short:
            return None
        if self.cuts is None:
            self.finish()
        half = BINS // 2
        counts = self.high[:half]
        (top, top_ties), (floor, floor_ties) = self.cuts  # type: ignore[misc]
        kept = _top_counts(counts, floor, floor_ties) - _top_counts(counts, top, top_ties)
        if self.stop <= self.start:
            kept.zero_()
        patterns = torch.arange(half, dtype=torch.int32).to(torch.int16)
        values = patterns.view(self.dtype).double()  # type: ignore[arg-type]
        return _weighted_sum(counts, values), _weighted_sum(kept, values)


class Bits:
    """The magnitudes of a block as :func:`magnitude_bits`, compared with pattern thresholds (any dtype)."""

    def __init__(self, values: torch.Tensor):
        self.bits = magnitude_bits(values)

    def between(self, floor: int, upper: int | None) -> torch.Tensor:
        """floor < magnitude < upper (no upper bound when None), flattened."""
        keep = self.bits > floor
        return keep if upper is None else keep.logical_and_(self.bits <= upper - 1)  # upper may be 2¹⁵: not an int16

    def equal(self, value: int) -> torch.Tensor:
        return self.bits == value


class Above:
    """16-bit magnitudes m as one int16 key per entry, k = 2·(m − floor − 1) − 32768 wrapped to 16 bits.

    The key is one kernel, ``C + 2·pattern`` in int16: doubling drops the sign bit (m and −m give
    the same key) and the constant shifts ``floor < m`` to the bottom of the signed range, so
    ``floor < m < upper`` is the single comparison ``k < 2·(upper − floor − 1) − 32768``. That
    replaces |x|, two comparisons and their conjunction, with the same mask (for upper ≤ 2¹⁵ the
    wrapped values of m ≤ floor land above every kept key).
    """

    def __init__(self, values: torch.Tensor, floor: int):
        self.floor = floor
        shift = torch.tensor(_int16(-2 * (floor + 1) - 32768), dtype=torch.int16, device=values.device)
        self.keys = torch.add(shift, values.reshape(-1).view(torch.int16), alpha=2)

    def between(self, floor: int, upper: int | None) -> torch.Tensor:
        """floor < magnitude < upper (no upper bound when None), flattened; ``floor`` is the constructor's."""
        assert floor == self.floor
        limit = 2 * ((upper if upper is not None else BINS // 2) - floor - 1) - 32768
        if limit <= -32768:  # an empty range (the limit would wrap as an int16 scalar)
            return torch.zeros(self.keys.shape, dtype=torch.bool, device=self.keys.device)
        return self.keys < limit

    def equal(self, value: int) -> torch.Tensor:
        return self.keys == _int16(2 * (value - self.floor - 1) - 32768)


def _int16(value: int) -> int:
    """``value`` wrapped to a signed 16-bit integer, as int16 arithmetic wraps."""
    return (value + 32768) % 65536 - 32768


def _top_counts(counts: torch.Tensor, threshold: int, ties: int) -> torch.Tensor:
    """How many of each pattern the top set (above ``threshold``, plus ``ties`` equal to it) holds."""
    top = torch.zeros_like(counts)
    top[threshold + 1:] = counts[threshold + 1:]
    if threshold < counts.numel():
        top[threshold] = ties
    return top


def _weighted_sum(counts: torch.Tensor, values: torch.Tensor) -> float:
    used = counts > 0  # skip empty bins: 0·inf would be NaN
    return math.fsum((counts[used].double() * values[used]).tolist())


def _find(histogram: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value, and how many values lie in higher bins."""
    from_top = torch.flip(histogram, [0]).cumsum(0)
    index = int(torch.searchsorted(from_top, torch.tensor(k)))
    above = int(from_top[index - 1]) if index > 0 else 0
    return BINS - 1 - index, above
