"""breadcrumbs_ties in row blocks: the same bytes as whole, for 16- and 32-bit floats, with and without rescale."""

from __future__ import annotations

import pytest
import torch
from mergehub import MergeInputs
from mergehub.maths import breadcrumbs_ties_blocks
from mergehub.testing import merge_in_blocks
from mergehub_method_breadcrumbs_ties.method import merge

PARAMS = [{}, {"weight": 0.6, "density": 0.7, "gamma": 0.03}, {"weight": -0.5, "density": 0.4, "gamma": 0.2}]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rescale", [False, True])
def test_blocks_give_the_bytes_of_the_whole_tensor(dtype, rescale):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(90, 50, generator=g)
    tensors = [t.to(dtype) for t in (base, base + 0.1 * torch.randn(90, 50, generator=g),
                                     base + 0.1 * torch.randn(90, 50, generator=g))]
    shared = {"normalize": False, "rescale": rescale, "lambda": 0.8, "int8_mask": False}
    whole = merge(MergeInputs("t", tensors, 0, PARAMS, shared))
    blocks = merge_in_blocks(breadcrumbs_ties_blocks, MergeInputs("t", tensors, 0, PARAMS, shared), [0, 1, 40, 41, 90])
    assert torch.equal(blocks, whole)
