"""breadcrumbs in row blocks: the same bytes as whole, for 16- and 32-bit floats, with and without rescale."""

from __future__ import annotations

import pytest
import torch

from mergehub import MergeInputs
from mergehub.outliers import breadcrumbs_blocks
from mergehub_method_breadcrumbs.method import merge

PARAMS = [{}, {"weight": 0.6, "density": 0.7, "gamma": 0.03}, {"weight": 0.5, "density": 0.4, "gamma": 0.2}]


def blocked(tensors: list[torch.Tensor], shared: dict, cuts: list[int]) -> torch.Tensor:
    shape = tuple(tensors[0].shape)
    meta = MergeInputs("t", [torch.empty(0, dtype=tensors[0].dtype)] * 3, 0, PARAMS, shared, full_shape=shape)
    merger = breadcrumbs_blocks(meta)
    ranges = list(zip(cuts[:-1], cuts[1:]))

    def block(start: int, stop: int) -> MergeInputs:
        return MergeInputs("t", [t[start:stop] for t in tensors], 0, PARAMS, shared, offset=start, full_shape=shape)

    for pass_index in range(merger.passes):
        for r in ranges:
            merger.collect(pass_index, block(*r))
    return torch.cat([merger.merge(block(*r)) for r in ranges])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rescale", [False, True])
def test_blocks_give_the_bytes_of_the_whole_tensor(dtype, rescale):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(120, 70, generator=g)
    tensors = [t.to(dtype) for t in (base, base + 0.1 * torch.randn(120, 70, generator=g),
                                     base + 0.1 * torch.randn(120, 70, generator=g))]
    shared = {"normalize": True, "rescale": rescale, "lambda": 1.0, "int8_mask": False}
    whole = merge(MergeInputs("t", tensors, 0, PARAMS, shared))
    for cuts in ([0, 120], [0, 1, 2, 50, 119, 120], list(range(121))):
        assert torch.equal(blocked(tensors, shared, cuts), whole)
