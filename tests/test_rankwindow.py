"""Exact selection over blocks: rank windows, sampled quantiles and per-row sums give the same answer for any split."""

from __future__ import annotations

import math

import torch
from mergehub.maths.quantiles import BlockQuantiles, index_quantiles
from mergehub.maths.rowsums import RowSums
from mergehub.maths.topk import RankWindow


def reference(values: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Sort by (-|x|, index) in plain Python and keep ranks [start, stop)."""
    mags = values.abs().float().tolist()
    order = sorted(range(len(mags)), key=lambda i: (-mags[i], i))
    mask = torch.zeros(len(mags), dtype=torch.bool)
    mask[order[start:stop]] = True
    return mask


def test_rank_window_matches_a_sort_whatever_the_blocks():
    generator = torch.Generator().manual_seed(0)
    for trial in range(80):
        n = int(torch.randint(1, 1500, (), generator=generator))
        dtype = (torch.bfloat16, torch.float16, torch.float32)[trial % 3]
        values = torch.randn(n, generator=generator).to(dtype)
        if dtype == torch.float32 and trial % 2:
            values = values.bfloat16().float()  # float32 with ties, through the two-pass path
        if trial % 4 == 0:
            values[torch.rand(n, generator=generator) < 0.3] = 0
        a, b = (int(torch.randint(0, n + 1, (), generator=generator)) for _ in range(2))
        start, stop = (0 if trial % 5 == 0 else min(a, b)), (n if trial % 7 == 0 else max(a, b))
        expected = reference(values, start, stop)
        # blocks of 1-5 elements on short vectors: as telling as on long ones, at a fraction of the Python loop
        for size in (n, max(1, n // 7), 1 + trial % 5 if n <= 300 else max(6, n // 60)):
            window = RankWindow(start, stop)
            blocks = torch.split(values, size)
            for pass_index in range(RankWindow.passes_for(dtype)):
                for block in blocks:
                    window.collect(pass_index, block)
            window.rewind()
            assert torch.equal(torch.cat([window.mask(block) for block in blocks]), expected), (trial, size)
            sums = window.magnitude_sums()
            assert (sums is None) == (dtype == torch.float32)
            if sums is not None:  # 16-bit: the L1 norms read off the histogram
                magnitudes = values.double().abs()
                assert math.isclose(sums[0], float(magnitudes.sum()), rel_tol=1e-12, abs_tol=1e-12)
                assert math.isclose(sums[1], float(magnitudes[expected].sum()), rel_tol=1e-12, abs_tol=1e-12)


def test_index_quantiles_agree_with_a_sort():
    generator = torch.Generator().manual_seed(1)
    for trial in range(60):
        n = int(torch.randint(1, 3000, (), generator=generator))
        dtype = (torch.bfloat16, torch.float16, torch.float32)[trial % 3]
        values = (torch.randn(n, generator=generator) * 10.0 ** (trial % 5 - 2)).to(dtype)
        if trial % 4 == 0:
            values[::7] = float("nan")
        if trial % 6 == 0:
            values[::5] = -0.0
        ordered = torch.sort(values).values
        qs = (0.0, 0.25, 0.5, 0.75, 1.0)
        for got, q in zip(index_quantiles(values, qs), qs):
            want = ordered[int(q * (n - 1))]
            assert got.dtype == dtype and (got == want or (got.isnan() and want.isnan())), (trial, q)


def test_sampled_quantiles_do_not_depend_on_the_blocks():
    values = torch.randn(30, 1000, generator=torch.Generator().manual_seed(2)).bfloat16()
    results = []
    for rows in (30, 7, 1):
        sample = BlockQuantiles(values.numel(), 5000, torch.Generator().manual_seed(3))
        for start in range(0, 30, rows):
            block = values[start:start + rows].reshape(-1)
            where = sample.positions(start * 1000, block.numel())
            sample.add(start * 1000, block.numel(), block[where])
        results.append(torch.stack(sample.quantiles((0.25, 0.5, 0.75))))
    drawn = values.reshape(-1)[torch.randint(values.numel(), (5000,), generator=torch.Generator().manual_seed(3))]
    assert all(torch.equal(r, torch.stack(index_quantiles(drawn, (0.25, 0.5, 0.75)))) for r in results)


def test_row_sums_do_not_depend_on_the_blocks():
    values = torch.randn(50, 33, generator=torch.Generator().manual_seed(4)) * 1e3
    totals = set()
    for rows in (50, 9, 1):
        sums = RowSums((50, 33))
        for start in range(0, 50, rows):
            sums.put(0, start, values[start:start + rows])
        totals.add(sums.total(0))
    assert len(totals) == 1 and math.isclose(totals.pop(), float(values.double().sum()), rel_tol=1e-12)


def test_int16_magnitude_keys_agree_with_the_bits_for_every_pattern():
    """RankWindow's one-kernel key (``Above``) selects exactly what |bits| comparisons select, on all 2¹⁶ patterns."""
    from mergehub.maths.topk import Above, Bits

    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    magnitude = patterns.view(torch.int16).int() & 0x7FFF
    bits = Bits(patterns)
    for floor in (0, 1, 2, 100, 0x3F80, 0x7F7F, 0x7F80, 0x7FFE, 0x7FFF):
        keys = Above(patterns, floor)
        for upper in (None, floor, floor + 1, floor + 2, 0x7FFF, 0x8000):
            if upper is not None and upper > 0x8000:
                continue
            want = (magnitude > floor) & (magnitude < (0x8000 if upper is None else upper))
            assert torch.equal(keys.between(floor, upper), want)
            assert torch.equal(bits.between(floor, upper), want)
        for value in {floor, min(floor + 1, 0x7FFF), 0x7FFF, 0}:
            assert torch.equal(keys.equal(value), magnitude == value)
