"""model_stock: its properties, an independent reference in plain Python, and a merge through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_model_stock.method import merge


def model_stock(base: torch.Tensor, *finetunes: torch.Tensor, filter_wise: bool = False) -> torch.Tensor:
    tensors = [base, *finetunes]
    return merge(MergeInputs("t", tensors, 0, [{} for _ in tensors], {"filter_wise": filter_wise}))


def reference(base: torch.Tensor, finetunes: list[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """The paper's rule written out with Python floats, one vector (whole tensor or row) at a time."""
    shape = base.shape
    def vectors(t: torch.Tensor) -> list[list[float]]:
        if filter_wise and t.dim() > 1:
            return t.double().reshape(-1, shape[-1]).tolist()
        return [t.double().flatten().tolist()]

    n = len(finetunes)
    out = []
    for b, xs in zip(vectors(base), zip(*(vectors(x) for x in finetunes))):
        offsets = [[xi - bi for xi, bi in zip(x, b)] for x in xs]
        cosines = []
        for i in range(n):
            for j in range(i + 1, n):
                dot = sum(p * q for p, q in zip(offsets[i], offsets[j]))
                norms = math.sqrt(sum(p * p for p in offsets[i])) * math.sqrt(sum(q * q for q in offsets[j]))
                cosines.append(min(1.0, max(-1.0, dot / max(norms, 1e-6))))
        cos = sum(cosines) / len(cosines)
        denominator = 1 + (n - 1) * cos
        t = 0.0 if abs(denominator) < 1e-6 else n * cos / denominator
        out += [t * sum(column) / n + (1 - t) * bi for bi, column in zip(b, zip(*xs))]
    return torch.tensor(out, dtype=torch.float64).reshape(shape)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("shape", [(6, 5), (7,)])
def test_matches_an_independent_computation(n: int, filter_wise: bool, shape: tuple[int, ...]) -> None:
    base = randn(*shape, seed=0)
    shared = randn(*shape, seed=1)  # a common direction, so the offsets have a real angle between them
    finetunes = [base + 0.1 * (shared + randn(*shape, seed=10 + i)) for i in range(n)]
    expected = reference(base, finetunes, filter_wise)
    torch.testing.assert_close(model_stock(base, *finetunes, filter_wise=filter_wise), expected, rtol=1e-12, atol=1e-12)
    result32 = model_stock(base.float(), *[x.float() for x in finetunes], filter_wise=filter_wise)
    assert result32.dtype == torch.float32
    torch.testing.assert_close(result32, expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_identical_finetunes_give_that_finetune(n: int, filter_wise: bool) -> None:
    base, finetune = randn(4, 6, seed=2, dtype=torch.float32), randn(4, 6, seed=3, dtype=torch.float32)
    result = model_stock(base, *[finetune.clone() for _ in range(n)], filter_wise=filter_wise)
    torch.testing.assert_close(result, finetune, rtol=1e-6, atol=1e-6)


def test_two_orthogonal_offsets_give_the_base() -> None:
    # cosθ = 0, so t = 2·0 / (1 + 0) = 0: the base, bit for bit
    base = randn(2, 3, seed=4, dtype=torch.float32)
    first = base + torch.tensor([[1.0, 0, 0], [2.0, 0, 0]])
    second = base + torch.tensor([[0, 3.0, 0], [0, 0, 1.0]])
    assert torch.equal(model_stock(base, first, second), base)
    assert torch.equal(model_stock(base, first, second, filter_wise=True), base)


def test_two_identical_offsets_give_the_finetune() -> None:
    base = randn(3, 4, seed=5, dtype=torch.float32)
    finetune = base + randn(3, 4, seed=6, dtype=torch.float32)
    torch.testing.assert_close(model_stock(base, finetune, finetune.clone()), finetune)


def test_filter_wise_works_per_row_by_hand() -> None:
    base = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    first = torch.tensor([[1.0, 2.0], [2.0, 1.0]])  # offsets [1, 2] and [1, 0]
    second = torch.tensor([[1.0, 2.0], [1.0, 2.0]])  # offsets [1, 2] and [0, 1]
    # row 0: identical offsets, cos 1, t = 1 → the average [1, 2]; row 1: orthogonal, t = 0 → the base [1, 1]
    assert torch.equal(model_stock(base, first, second, filter_wise=True), torch.tensor([[1.0, 2.0], [1.0, 1.0]]))
    # flattened: offsets [1, 2, 1, 0] and [1, 2, 0, 1], cos = 5/6, t = (10/6) / (11/6) = 10/11
    average = torch.tensor([[1.0, 2.0], [1.5, 1.5]])
    torch.testing.assert_close(model_stock(base, first, second), 10 / 11 * average + 1 / 11 * base)


def test_opposite_offsets_keep_the_base_instead_of_dividing_by_zero() -> None:
    # two models: cos = −1 makes 1 + (N − 1)·cos = 0; mergekit 0.1.5 keeps the base there
    base = randn(2, 4, seed=7, dtype=torch.float32)
    offset = randn(2, 4, seed=8, dtype=torch.float32)
    result = model_stock(base, base + offset, base - offset)
    assert torch.isfinite(result).all()
    assert torch.equal(result, base)
    # per row, only the singular row falls back: row 1 is identical offsets → the fine-tune
    second = torch.stack([base[0] - offset[0], base[1] + offset[1]])
    rows = model_stock(base, base + offset, second, filter_wise=True)
    assert torch.equal(rows[0], base[0])
    torch.testing.assert_close(rows[1], base[1] + offset[1])


def test_copies_of_the_base_give_the_base() -> None:
    base = randn(3, 3, seed=9, dtype=torch.bfloat16)
    result = model_stock(base, base.clone(), base.clone(), base.clone())
    assert result.dtype == torch.bfloat16 and torch.equal(result, base)


def test_a_one_dimensional_tensor_is_one_row() -> None:
    base, a, b = (randn(8, seed=s) for s in (10, 11, 12))
    assert torch.equal(model_stock(base, a, b, filter_wise=True), model_stock(base, a, b))


def test_the_base_may_come_anywhere_in_the_inputs() -> None:
    base, a, b = (randn(3, 5, seed=s) for s in (13, 14, 15))
    first = merge(MergeInputs("t", [a, base, b], 1, [{}, {}, {}], {"filter_wise": False}))
    torch.testing.assert_close(first, model_stock(base, a, b), rtol=0, atol=1e-15)


def test_plugin_declares_its_contract(fresh_registry) -> None:
    spec = fresh_registry.methods["model_stock"].spec
    assert (spec.base, spec.min_inputs, spec.max_inputs, spec.randomized) == ("required", 3, None, False)
    assert spec.defaults() == {"filter_wise": False} and spec.required_params() == []


def test_merge_through_the_cli_with_the_base_added_automatically(tiny_models, tmp_path: Path) -> None:
    base, first, second = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    recipe = tmp_path / "model_stock.yml"
    # models: lists only the fine-tunes; base_model is appended as an input by the planner
    recipe.write_text(f"merge_method: model_stock\nbase_model: {base}\nmodels:\n  - model: {first}\n  - model: {second}\n"
                      "parameters:\n  filter_wise: [{filter: mlp, value: true}, {value: false}]\ndtype: float32\n")
    out = tmp_path / "merged"

    result = run_cli("merge", recipe, "--out", out)

    assert result.returncode == 0, result.output
    merged, b, x, y = load_state(out), load_state(base), load_state(first), load_state(second)
    assert set(merged) == set(b)
    for name, filter_wise in (("model.layers.1.mlp.down_proj.weight", True), ("model.layers.0.self_attn.q_proj.weight", False),
                              ("model.norm.weight", False)):
        expected = reference(b[name], [x[name], y[name]], filter_wise).float()
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(merged[name], b[name])
    forward_pass(out)
