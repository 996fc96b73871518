"""breadcrumbs in row blocks: the same bytes as whole, for 16- and 32-bit floats, with and without rescale."""

from __future__ import annotations

import pytest
import torch
from mergehub import MergeInputs
from mergehub.maths import breadcrumbs_blocks
from mergehub.testing import merge_in_blocks
from mergehub_method_breadcrumbs.method import merge

PARAMS = [{}, {"weight": 0.6, "density": 0.7, "gamma": 0.03}, {"weight": 0.5, "density": 0.4, "gamma": 0.2}]


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
        assert torch.equal(merge_in_blocks(breadcrumbs_blocks, MergeInputs("t", tensors, 0, PARAMS, shared), cuts), whole)
