"""Exact top-k by magnitude over blocks: the k largest, lowest indices first among equals, any split."""

from __future__ import annotations

import torch
from mergehub.maths.topk import TopK


def reference(values: torch.Tensor, k: int) -> torch.Tensor:
    """Sort by (-|x|, index) in plain Python and take the first k."""
    mags = values.abs().float().tolist()
    chosen = sorted(range(len(mags)), key=lambda i: (-mags[i], i))[:k]
    mask = torch.zeros(len(mags), dtype=torch.bool)
    mask[chosen] = True
    return mask


def test_matches_a_sort_whatever_the_blocks():
    generator = torch.Generator().manual_seed(0)
    for trial in range(90):
        n = int(torch.randint(1, 2000, (), generator=generator))
        dtype = (torch.bfloat16, torch.float16, torch.float32)[trial % 3]
        values = torch.randn(n, generator=generator).to(dtype)  # 16-bit floats: many equal magnitudes
        if dtype == torch.float32:
            values = values.bfloat16().float()  # float32 with ties, through the two-pass path
        if trial % 3 == 0:
            values[torch.rand(n, generator=generator) < 0.3] = 0
        k = int(torch.randint(1, n + 1, (), generator=generator))
        # blocks of 1-5 elements on short vectors: as telling as on long ones, at a fraction of the Python loop
        for size in (n, max(1, n // 7), 1 + trial % 5 if n <= 300 else max(6, n // 60)):
            selector = TopK(k)
            blocks = torch.split(values, size)
            for pass_index in range(TopK.passes_for(values.dtype)):
                for block in blocks:
                    selector.collect(pass_index, block)
            got = torch.cat([selector.mask(block) for block in blocks])
            assert torch.equal(got, reference(values, k)), (trial, n, k, size)
            assert int(got.sum()) == k
