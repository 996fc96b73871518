"""multislerp: its properties, an independent float64 reference, the plan-time check, and a merge through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy
import pytest
import torch
from mergehub import MergehubError, MergeInputs
from mergehub.testing import forward_pass, load_state, plan_problems, run_cli
from mergehub_method_multislerp.method import check, merge


def multislerp_of(xs: list[torch.Tensor], weights: list[float], base: torch.Tensor | None = None,
                  normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    tensors = list(xs) + ([base] if base is not None else [])
    params = [{"weight": w} for w in weights] + ([{}] if base is not None else [])
    shared = {"normalize_weights": normalize_weights, "eps": eps}
    return merge(MergeInputs("t", tensors, len(xs) if base is not None else None, params, shared))


def reference(xs, weights, base=None, normalize_weights=True, eps=1e-8) -> numpy.ndarray:
    """The reference equations in plain numpy float64, one step per line."""
    shape = xs[0].shape
    flat = [x.double().numpy().ravel() for x in xs]
    if base is not None:
        flat = [f - base.double().numpy().ravel() for f in flat]
    w = numpy.array(weights, dtype=numpy.float64)
    if normalize_weights:
        w = w / w.sum()
    norms = [numpy.linalg.norm(f) for f in flat]
    units = [f / (n + eps) for f, n in zip(flat, norms)]
    m = sum(wi * u for wi, u in zip(w, units))
    m = m / numpy.linalg.norm(m)
    tau = sum(wi * (u - numpy.dot(u, m) * m) for wi, u in zip(w, units))
    r = numpy.linalg.norm(tau) + eps
    y = (math.cos(r) * m + math.sin(r) / r * tau) * sum(wi * n for wi, n in zip(w, norms))
    y = y.reshape(shape)
    return y + base.double().numpy() if base is not None else y


def tensors(n: int, seed: int, shape: tuple[int, ...] = (4, 6), dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_matches_the_float64_reference(n: int, with_base: bool, normalize_weights: bool) -> None:
    *xs, b = tensors(n + 1, seed=n)
    weights = [0.5 + 0.25 * i for i in range(n)]
    base = b if with_base else None
    result = multislerp_of(xs, weights, base, normalize_weights)
    numpy.testing.assert_allclose(result.numpy(), reference(xs, weights, base, normalize_weights), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("with_base", [False, True])
def test_one_input_is_returned_unchanged(with_base: bool) -> None:
    x, b = tensors(2, seed=1, dtype=torch.bfloat16)
    assert multislerp_of([x], [0.3], b if with_base else None) is x


@pytest.mark.parametrize("n", [2, 3])
def test_identical_inputs_give_that_input(n: int) -> None:
    x = tensors(1, seed=2)[0]
    torch.testing.assert_close(multislerp_of([x.clone() for _ in range(n)], [1.0] * n), x)


def test_weights_one_zero_reproduce_the_first_model() -> None:
    x1, x2, b = tensors(3, seed=3)
    torch.testing.assert_close(multislerp_of([x1, x2], [1, 0]), x1)
    torch.testing.assert_close(multislerp_of([x1, x2], [1, 0], base=b), x1)


def test_two_orthogonal_unit_vectors_meet_halfway() -> None:
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # mean direction (1, 1)/√2; both tangents cancel; norm 1
    h = math.sqrt(0.5)
    torch.testing.assert_close(multislerp_of([e0, e1], [1, 1]), torch.tensor([h, h]))


def test_unnormalised_weights_scale_the_norm() -> None:
    x1, x2 = tensors(2, seed=4)
    # the direction only depends on the weights' ratios; the norm is Σ wᵢ nᵢ
    torch.testing.assert_close(multislerp_of([x1, x2], [2, 2], normalize_weights=False),
                               2 * multislerp_of([x1, x2], [1, 1], normalize_weights=False))


def test_antipodal_pair_falls_back_to_the_weighted_sum() -> None:
    x = tensors(1, seed=5)[0]
    assert torch.equal(multislerp_of([x, -x], [1, 1]), torch.zeros_like(x))
    # small integers, so that (b ± d) − b gives back ±d exactly
    b, d = torch.arange(6.0), torch.tensor([1.0, -2.0, 3.0, 0.0, 5.0, -1.0])
    assert torch.equal(multislerp_of([b + d, b - d], [1, 1], base=b), b)


def test_antipodal_triple_is_an_error() -> None:
    x = torch.tensor([1.0, 0.0])
    with pytest.raises(MergehubError, match="weighted mean of the input directions is zero"):
        multislerp_of([x, -x, x * 0], [1, 1, 1])


def test_computed_in_the_input_dtype() -> None:
    xs = tensors(3, seed=6, dtype=torch.bfloat16)
    result = multislerp_of(xs, [0.2, 0.3, 0.5])
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result.double(), torch.from_numpy(reference(xs, [0.2, 0.3, 0.5])), rtol=0.03, atol=0.03)


def test_check_reports_weights_that_cannot_be_normalised() -> None:
    shared = {"normalize_weights": True, "eps": 1e-8}
    assert "sum to 0" in check([{"weight": 0.5}, {"weight": -0.5}, {}], shared)
    assert check([{"weight": 0.5}, {"weight": -0.5}], shared | {"normalize_weights": False}) is None
    assert check([{"weight": 0.5}, {"weight": 0.5}], shared) is None
    assert check([{"weight": 0.0}, {}], shared) is None  # a single input is returned as it is


def test_merge_through_the_cli(tiny_models, tmp_path: Path) -> None:
    base, a, b, c = (tiny_models(f"multislerp-{i}", layers=2, seed=i) for i in (1, 2, 3, 4))
    recipe = tmp_path / "multislerp.yml"
    recipe.write_text(f"""merge_method: multislerp
base_model: {base}
models:
  - {{model: {a}, parameters: {{weight: 0.5}}}}
  - {{model: {b}, parameters: {{weight: 0.3}}}}
  - {{model: {c}, parameters: {{weight: 0.2}}}}
""")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, sbase, *states = (load_state(p) for p in (tmp_path / "out", base, a, b, c))
    assert set(out) == set(sbase)
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        expected = reference([s[name] for s in states], [0.5, 0.3, 0.2], sbase[name])
        numpy.testing.assert_allclose(out[name].numpy(), expected, rtol=1e-5, atol=2e-6, err_msg=name)
    forward_pass(tmp_path / "out")


def test_weights_summing_to_zero_are_a_recipe_error(tiny_models) -> None:
    a, b = (tiny_models(f"multislerp-{i}", layers=2, seed=i) for i in (1, 2))
    text = (f"merge_method: multislerp\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n"
            f"  - {{model: {b}, parameters: {{weight: -1}}}}\n")
    problems = plan_problems(text)
    assert len(problems) == 1 and "sum to 0" in problems[0], problems
    assert plan_problems(text + "parameters: {normalize_weights: false}\n") == []
