"""linear against hand-computed maths, called directly and through the CLI."""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub_method_linear.method import merge


def run(tensors, weights, normalize=True):
    return merge(MergeInputs("t", tensors, None, [{"weight": w} for w in weights], {"normalize": normalize}))


def test_weighted_mean_by_hand():
    a = torch.tensor([1.0, 2.0, -4.0])
    b = torch.tensor([3.0, 0.0, 8.0])
    # (0.25·a + 0.5·b) / 0.75, element by element
    expected = torch.tensor([(0.25 + 1.5) / 0.75, 0.5 / 0.75, (-1.0 + 4.0) / 0.75])
    torch.testing.assert_close(run([a, b], [0.25, 0.5]), expected)


def test_without_normalize_is_a_plain_sum():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])
    torch.testing.assert_close(run([a, b], [2.0, -0.5], normalize=False), torch.tensor([-3.0, -6.0]))


def test_weights_one_zero_reproduce_the_first_model():
    a, b = torch.randn(5, 7, dtype=torch.bfloat16), torch.randn(5, 7, dtype=torch.bfloat16)
    assert torch.equal(run([a, b], [1, 0]), a)


def test_half_precision_is_computed_in_float32():
    # 1 + 2⁻⁹ is not representable in bfloat16, so a bf16 accumulation would round differently
    a = torch.full((4,), 1.0, dtype=torch.bfloat16)
    b = torch.full((4,), 1.0078125, dtype=torch.bfloat16)
    c = torch.full((4,), 1.0078125, dtype=torch.bfloat16)
    out = run([a, b, c], [1, 1, 1])
    expected = ((1.0 + 1.0078125 * 2) / 3)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, torch.full((4,), expected).bfloat16())


def test_float64_stays_float64():
    a = torch.tensor([1e-12], dtype=torch.float64)
    b = torch.tensor([3e-12], dtype=torch.float64)
    out = run([a, b], [1, 1])
    assert out.dtype == torch.float64 and out.item() == 2e-12
