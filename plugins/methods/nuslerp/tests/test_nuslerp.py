"""nuslerp: its properties, an independent per-vector float64 reference, and a merge through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy
import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, plan_problems, run_cli
from mergehub_method_nuslerp.method import merge

DEFAULTS = {"nuslerp_flatten": True, "nuslerp_row_wise": False}


def nuslerp_of(x1: torch.Tensor, x2: torch.Tensor, w1: float, w2: float, base: torch.Tensor | None = None,
               **shared: bool) -> torch.Tensor:
    tensors = [x1, x2] + ([base] if base is not None else [])
    params = [{"weight": w1}, {"weight": w2}] + ([{}] if base is not None else [])
    return merge(MergeInputs("t", tensors, 2 if base is not None else None, params, DEFAULTS | shared))


def arc(t: float, a: numpy.ndarray, b: numpy.ndarray) -> numpy.ndarray:
    """One vector on the arc from a to b, from the reference equations (float64)."""
    ua = a / max(numpy.linalg.norm(a), 1e-7)
    ub = b / max(numpy.linalg.norm(b), 1e-7)
    c = min(1.0, max(-1.0, float(numpy.dot(ua, ub))))
    if 1 - c * c <= 1e-16:
        return (1 - t) * a + t * b
    theta = math.acos(c)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def reference(x1, x2, w1, w2, base=None, flatten=True, row_wise=False) -> numpy.ndarray:
    total = w1 + w2
    t = 0.5 if abs(total) < 1e-6 else w2 / total
    v0, v1 = x1.double().numpy(), x2.double().numpy()
    if base is not None:
        v0, v1 = v0 - base.double().numpy(), v1 - base.double().numpy()
    if flatten:
        out = arc(t, v0.ravel(), v1.ravel()).reshape(v0.shape)
    elif row_wise:  # vectors along dim 0: one per column of a 2-D weight
        out = numpy.stack([arc(t, v0[:, j], v1[:, j]) for j in range(v0.shape[1])], axis=1)
    else:  # vectors along the last dim: one per row
        out = numpy.stack([arc(t, v0[i], v1[i]) for i in range(v0.shape[0])])
    return out + base.double().numpy() if base is not None else out


def tensors(n: int, seed: int, shape: tuple[int, ...] = (5, 8), dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(n)]


MODES = [{}, {"nuslerp_flatten": False}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}]


@pytest.mark.parametrize("mode", MODES, ids=["flatten", "rows", "row_wise"])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("weights", [(0.3, 0.9), (1.0, 1.0), (2.0, -0.5), (0.5, -0.5)])
def test_matches_the_float64_reference(mode: dict, with_base: bool, weights: tuple[float, float]) -> None:
    x1, x2, b = tensors(3, seed=len(mode) + 7 * with_base)
    base = b if with_base else None
    result = nuslerp_of(x1, x2, *weights, base=base, **mode)
    expected = reference(x1, x2, *weights, base=base, flatten=mode.get("nuslerp_flatten", True),
                         row_wise=mode.get("nuslerp_row_wise", False))
    numpy.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("mode", MODES, ids=["flatten", "rows", "row_wise"])
@pytest.mark.parametrize("with_base", [False, True])
def test_equal_weights_are_symmetric(mode: dict, with_base: bool) -> None:
    x1, x2, b = tensors(3, seed=3, dtype=torch.bfloat16)
    base = b if with_base else None
    assert torch.equal(nuslerp_of(x1, x2, 1, 1, base, **mode), nuslerp_of(x2, x1, 1, 1, base, **mode))


def test_t_is_the_second_weight_over_the_sum() -> None:
    x1, x2 = tensors(2, seed=4)
    torch.testing.assert_close(nuslerp_of(x1, x2, 1.0, 3.0), nuslerp_of(x1, x2, 0.25, 0.75))
    numpy.testing.assert_allclose(nuslerp_of(x1, x2, 1.0, 3.0).numpy(), reference(x1, x2, 0.25, 0.75), rtol=1e-5, atol=2e-6)


def test_weights_that_sum_to_zero_give_the_midpoint() -> None:
    x1, x2 = tensors(2, seed=5)
    assert torch.equal(nuslerp_of(x1, x2, 0.4, -0.4), nuslerp_of(x1, x2, 1.0, 1.0))


def test_weights_one_zero_reproduce_the_first_model() -> None:
    x1, x2, b = tensors(3, seed=6)
    torch.testing.assert_close(nuslerp_of(x1, x2, 1, 0), x1)
    torch.testing.assert_close(nuslerp_of(x1, x2, 0, 1, base=b), x2)


def test_colinear_only_when_exactly_parallel() -> None:
    x = torch.tensor([1.0, -1.0, 1.0, 1.0])  # unit vector ±0.5 in every entry: the cosine is exactly 1
    # exactly parallel: lerp
    assert torch.equal(nuslerp_of(x, 3 * x, 1, 1), 0.5 * x + 0.5 * (3 * x))
    # cos = 0.9996 would be lerped by slerp (threshold 0.9995) but not here
    u = torch.tensor([1.0, 0.0], dtype=torch.float64)
    v = torch.tensor([0.9996, math.sqrt(1 - 0.9996**2)], dtype=torch.float64)
    result = nuslerp_of(u, v, 1, 1)
    torch.testing.assert_close(result.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert not torch.allclose(result, 0.5 * u + 0.5 * v, rtol=0, atol=1e-9)


def test_rows_are_interpolated_separately() -> None:
    # row 0 is parallel (lerp), row 1 is a quarter turn (arc): only possible when not flattened
    x1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    x2 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    result = nuslerp_of(x1, x2, 1, 1, nuslerp_flatten=False)
    h = math.sqrt(0.5)
    torch.testing.assert_close(result, torch.tensor([[1.5, 0.0], [h, h]]))


def test_computed_in_the_input_dtype() -> None:
    x1, x2 = tensors(2, seed=9, dtype=torch.bfloat16)
    result = nuslerp_of(x1, x2, 0.3, 0.7)
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result.double(), torch.from_numpy(reference(x1, x2, 0.3, 0.7)), rtol=0.02, atol=0.02)


def test_merge_through_the_cli(tiny_models, tmp_path: Path) -> None:
    base, a, b = (tiny_models(f"nuslerp-{i}", layers=2, seed=i) for i in (1, 2, 3))
    recipe = tmp_path / "nuslerp.yml"
    recipe.write_text(f"""merge_method: nuslerp
base_model: {base}
models:
  - {{model: {a}, parameters: {{weight: 0.3}}}}
  - {{model: {b}, parameters: {{weight: 0.6}}}}
parameters:
  nuslerp_flatten: false
""")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, sbase, sa, sb = (load_state(p) for p in (tmp_path / "out", base, a, b))
    assert set(out) == set(sa)
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight", "lm_head.weight"):
        expected = reference(sa[name], sb[name], 0.3, 0.6, base=sbase[name], flatten=False)
        numpy.testing.assert_allclose(out[name].numpy(), expected, rtol=1e-5, atol=2e-6, err_msg=name)
    forward_pass(tmp_path / "out")


def test_input_contract_is_checked_at_plan_time(tiny_models) -> None:
    a, b, c = (tiny_models(f"nuslerp-{i}", layers=2, seed=i) for i in (1, 2, 3))
    one = f"merge_method: nuslerp\nbase_model: {a}\nparameters: {{weight: 1}}\nmodels:\n  - model: {a}\n  - model: {b}\n"
    assert any("exactly 2 non-base inputs" in p for p in plan_problems(one))
    three = f"merge_method: nuslerp\nparameters: {{weight: 1}}\nmodels:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n"
    assert any("exactly 2 non-base inputs" in p for p in plan_problems(three))
    with_base = (f"merge_method: nuslerp\nbase_model: {a}\nparameters: {{weight: 1}}\n"
                 f"models:\n  - model: {b}\n  - model: {c}\n")
    assert plan_problems(with_base) == []  # the base needs no weight
