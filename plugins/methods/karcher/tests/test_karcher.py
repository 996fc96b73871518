"""karcher: its properties, an independent float64 reference, and a merge through the CLI (base included)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy
import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, plan_problems, run_cli
from mergehub_method_karcher.method import merge


def karcher_of(*xs: torch.Tensor, max_iter: int = 10, tol: float = 1e-5, base: int | None = None) -> torch.Tensor:
    return merge(MergeInputs("t", list(xs), base, [{} for _ in xs], {"max_iter": max_iter, "tol": tol}))


def reference(xs: list[torch.Tensor], max_iter: int = 10, tol: float = 1e-5) -> numpy.ndarray:
    """The reference equations in plain numpy float64: equal weights, Riemannian gradient steps."""
    shape = xs[0].shape
    alpha = 1.0 / len(xs)
    flat = [x.double().numpy().ravel() for x in xs]
    norms = [numpy.linalg.norm(f) for f in flat]
    kept = [f / n for f, n in zip(flat, norms) if n > tol]
    if not kept:
        return numpy.zeros(shape)
    a = 1.0 / len(kept)  # the equal weights renormalised over the inputs that steer
    m = sum(a * u for u in kept)
    m = kept[0] if numpy.linalg.norm(m) < tol else m / numpy.linalg.norm(m)
    for _ in range(max_iter):
        g = numpy.zeros_like(m)
        for u in kept:
            c = min(1.0, max(-1.0, float(numpy.dot(m, u))))
            theta = math.acos(c)
            if theta >= tol:
                g += a * theta / math.sin(theta) * (u - c * m)
        step = numpy.linalg.norm(g)
        if step < tol:
            break
        m = math.cos(step) * m + math.sin(step) * g / step
        m = m / numpy.linalg.norm(m)
    return (sum(alpha * n for n in norms) * m).reshape(shape)


def tensors(n: int, seed: int, shape: tuple[int, ...] = (4, 6), dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("max_iter", [0, 1, 10, 50])
def test_matches_the_float64_reference(n: int, max_iter: int) -> None:
    xs = tensors(n, seed=n + max_iter)
    numpy.testing.assert_allclose(karcher_of(*xs, max_iter=max_iter).numpy(), reference(xs, max_iter), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_identical_inputs_give_that_input(n: int, dtype: torch.dtype) -> None:
    x = tensors(1, seed=n, dtype=dtype)[0]
    result = karcher_of(*[x.clone() for _ in range(n)])
    assert result.dtype == dtype
    tolerance = {"rtol": 0.01, "atol": 0.01} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(result, x, **tolerance)


def test_two_unit_vectors_give_their_normalised_midpoint() -> None:
    a, b = tensors(2, seed=7, shape=(32,))
    a, b = a / a.norm(), b / b.norm()
    midpoint = (a + b) / (a + b).norm()
    torch.testing.assert_close(karcher_of(a, b), midpoint)


def test_two_vectors_get_the_mean_norm() -> None:
    e0, e1 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    # direction halfway (45°), norm (2 + 4) / 2
    torch.testing.assert_close(karcher_of(e0, e1), 3 * torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))


def test_the_mean_is_a_fixed_point_of_the_gradient() -> None:
    xs = tensors(4, seed=9, shape=(50,), dtype=torch.float64)
    m = karcher_of(*xs, max_iter=100, tol=1e-12)
    m = m / m.norm()
    # at the Karcher mean the log-map vectors of the inputs cancel
    total = torch.zeros_like(m)
    for x in xs:
        u = x / x.norm()
        theta = torch.acos(torch.clamp(m @ u, -1, 1))
        total += theta / torch.sin(theta) * (u - torch.cos(theta) * m)
    assert total.norm() < 1e-9


def test_a_zero_tensor_does_not_steer_but_counts_in_the_norm() -> None:
    x = tensors(1, seed=10)[0]
    torch.testing.assert_close(karcher_of(x, torch.zeros_like(x)), 0.5 * x)
    assert torch.equal(karcher_of(torch.zeros(3), torch.zeros(3)), torch.zeros(3))


def test_order_and_base_do_not_matter() -> None:
    a, b, c = tensors(3, seed=11)
    expected = karcher_of(a, b, c)
    torch.testing.assert_close(karcher_of(c, a, b), expected)
    assert torch.equal(karcher_of(a, b, c, base=0), expected)


def test_one_input_is_returned_unchanged() -> None:
    x = tensors(1, seed=12)[0]
    assert karcher_of(x) is x


def test_merge_through_the_cli_counts_the_base_as_an_input(tiny_models, tmp_path: Path) -> None:
    base, a, b = (tiny_models(f"karcher-{i}", layers=2, seed=i) for i in (1, 2, 3))
    recipe = tmp_path / "karcher.yml"
    recipe.write_text(f"merge_method: karcher\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
                      "parameters: {max_iter: 20}\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, *states = (load_state(p) for p in (tmp_path / "out", a, b, base))
    assert set(out) == set(states[0])
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight", "lm_head.weight"):
        expected = reference([s[name] for s in states], max_iter=20)  # equal weights over all three
        numpy.testing.assert_allclose(out[name].numpy(), expected, rtol=1e-4, atol=1e-5, err_msg=name)
    forward_pass(tmp_path / "out")


def test_any_number_of_models_and_no_weights(tiny_models) -> None:
    a, b = (tiny_models(f"karcher-{i}", layers=2, seed=i) for i in (1, 2))
    assert plan_problems(f"merge_method: karcher\nmodels:\n  - model: {a}\n") == []
    assert any("weight" in p for p in plan_problems(
        f"merge_method: karcher\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n  - model: {b}\n"))
