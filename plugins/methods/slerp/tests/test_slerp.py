"""slerp: its properties, an independent float64 reference, and a gradient/filter recipe through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy
import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, plan_problems, run_cli
from mergehub_method_slerp.method import merge


def slerp_of(t: float, base: torch.Tensor, other: torch.Tensor, base_index: int = 0) -> torch.Tensor:
    tensors = [base, other] if base_index == 0 else [other, base]
    return merge(MergeInputs("t", tensors, base_index, [{}, {}], {"t": t}))


def reference(t: float, v0: torch.Tensor, v1: torch.Tensor) -> numpy.ndarray:
    """slerp written out from the reference equations in numpy float64."""
    a, b = v0.double().numpy().ravel(), v1.double().numpy().ravel()
    norm_a, norm_b = numpy.linalg.norm(a), numpy.linalg.norm(b)
    norm_a = norm_a if norm_a > 1e-8 else 1.0
    norm_b = norm_b if norm_b > 1e-8 else 1.0
    d = min(1.0, max(-1.0, float(numpy.dot(a / norm_a, b / norm_b))))
    if abs(d) > 0.9995:
        y = (1 - t) * a + t * b
    else:
        theta = math.acos(d)
        y = math.sin((1 - t) * theta) / math.sin(theta) * a + math.sin(t * theta) / math.sin(theta) * b
    return y.reshape(v0.shape)


def pair(seed: int, shape: tuple[int, ...] = (6, 9), dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("base_index", [0, 1])
def test_t0_gives_the_base_and_t1_the_other_exactly(dtype: torch.dtype, base_index: int) -> None:
    base, other = pair(1, dtype=dtype)
    assert torch.equal(slerp_of(0.0, base, other, base_index), base)
    assert torch.equal(slerp_of(1.0, base, other, base_index), other)
    assert slerp_of(0.3, base, other, base_index).dtype == dtype


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [0.1, 0.5, 0.77, -0.25, 1.3])
def test_matches_the_float64_reference(seed: int, t: float) -> None:
    base, other = pair(seed)
    numpy.testing.assert_allclose(slerp_of(t, base, other).numpy(), reference(t, base, other), rtol=1e-5, atol=1e-6)


def test_float64_inputs_are_computed_in_float64() -> None:
    base, other = pair(3, dtype=torch.float64)
    result = slerp_of(0.4, base, other)
    assert result.dtype == torch.float64
    numpy.testing.assert_allclose(result.numpy(), reference(0.4, base, other), rtol=1e-12, atol=1e-14)


def test_half_precision_is_computed_in_float32_and_cast_back() -> None:
    base, other = pair(5, dtype=torch.bfloat16)
    result = slerp_of(0.35, base, other)
    assert result.dtype == torch.bfloat16
    expected = torch.from_numpy(reference(0.35, base, other)).to(torch.bfloat16)
    # float32 against float64 maths: the bf16 roundings may differ by at most one step
    torch.testing.assert_close(result.float(), expected.float(), rtol=2 ** -7, atol=1e-3)


@pytest.mark.parametrize("factor", [2.5, -0.4])
def test_parallel_and_antiparallel_vectors_give_the_lerp(factor: float) -> None:
    base = pair(7)[0]
    other = base * factor
    for t in (0.2, 0.6):
        torch.testing.assert_close(slerp_of(t, base, other), (1 - t) * base + t * other)


def test_the_lerp_threshold_is_0_9995() -> None:
    u = torch.tensor([1.0, 0.0])
    just_inside = torch.tensor([0.9996, math.sqrt(1 - 0.9996**2)])  # cos = 0.9996 → lerp
    just_outside = torch.tensor([0.9994, math.sqrt(1 - 0.9994**2)])  # cos = 0.9994 → arc
    assert torch.equal(slerp_of(0.5, u, just_inside), 0.5 * u + 0.5 * just_inside)
    arc = slerp_of(0.5, u, just_outside)
    assert not torch.equal(arc, 0.5 * u + 0.5 * just_outside)
    torch.testing.assert_close(arc.norm(), torch.tensor(1.0))


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_unit_vectors_stay_on_the_unit_sphere(t: float) -> None:
    a, b = pair(11, shape=(64,))
    a, b = a / a.norm(), b / b.norm()
    torch.testing.assert_close(slerp_of(t, a, b).norm(), torch.tensor(1.0))


def test_quarter_turn_by_hand() -> None:
    # orthogonal unit vectors: Y = cos(tπ/2)·e0 + sin(tπ/2)·e1
    e0, e1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    t = 1 / 3
    torch.testing.assert_close(slerp_of(t, e0, e1), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6), 0.0]))


def test_a_zero_norm_tensor_is_not_normalised() -> None:
    # ‖v0‖ ≤ 1e-8 counts as 1, so d = 0, θ = π/2 and Y = sin(tπ/2)·v1
    zero, other = torch.zeros(5), pair(2, shape=(5,))[1]
    torch.testing.assert_close(slerp_of(0.3, zero, other), math.sin(0.3 * math.pi / 2) * other)


def test_a_tensor_only_one_model_has_is_copied() -> None:
    x = pair(4)[0]
    assert merge(MergeInputs("lm_head.weight", [x], 0, [{}], {"t": 0.5})) is x


def test_gradient_and_filters_through_the_cli(tiny_models, tmp_path: Path) -> None:
    a, b = tiny_models("slerp-a", layers=4, seed=1), tiny_models("slerp-b", layers=4, seed=2)
    recipe = tmp_path / "slerp.yml"
    # slice 1: t = [0, 1] over 4 layers; slice 2: per-tensor filters (the same 4 layers again)
    recipe.write_text(f"""merge_method: slerp
base_model: {a}
slices:
  - sources: [{{model: {a}, layer_range: [0, 4]}}, {{model: {b}, layer_range: [0, 4]}}]
    parameters: {{t: [0, 1]}}
  - sources: [{{model: {a}, layer_range: [0, 4]}}, {{model: {b}, layer_range: [0, 4]}}]
    parameters:
      t:
        - {{filter: self_attn, value: [0, 0.5, 0.7, 1]}}
        - {{filter: mlp, value: [1, 0.5, 0.3, 0]}}
        - {{value: 0.5}}
""")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)

    layer = sorted(n.removeprefix("model.layers.0.") for n in sa if n.startswith("model.layers.0."))
    for name in layer:
        assert torch.equal(out[f"model.layers.0.{name}"], sa[f"model.layers.0.{name}"]), name  # t = 0: the base
        assert torch.equal(out[f"model.layers.3.{name}"], sb[f"model.layers.3.{name}"]), name  # t = 1: the other
        for k in (1, 2):  # t = 1/3, 2/3
            expected = reference(k / 3, sa[f"model.layers.{k}.{name}"], sb[f"model.layers.{k}.{name}"])
            numpy.testing.assert_allclose(out[f"model.layers.{k}.{name}"].numpy(), expected, rtol=1e-5, atol=1e-6)

    by_hand = {"self_attn": [0, 0.5, 0.7, 1], "mlp": [1, 0.5, 0.3, 0]}
    for k in range(4):
        for name in layer:
            t = next((values[k] for key, values in by_hand.items() if key in name), 0.5)
            src, dst = f"model.layers.{k}.{name}", f"model.layers.{4 + k}.{name}"
            if t in (0, 1):
                assert torch.equal(out[dst], (sa if t == 0 else sb)[src]), dst
            else:
                numpy.testing.assert_allclose(out[dst].numpy(), reference(t, sa[src], sb[src]), rtol=1e-5, atol=1e-6)

    # outside the layers: embeddings from the first slice (t = [0, 1] at 0), the rest from the last (t = 0.5)
    assert torch.equal(out["model.embed_tokens.weight"], sa["model.embed_tokens.weight"])
    for name in ("model.norm.weight", "lm_head.weight"):
        numpy.testing.assert_allclose(out[name].numpy(), reference(0.5, sa[name], sb[name]), rtol=1e-5, atol=1e-6)
    forward_pass(tmp_path / "out")


def test_input_contract_is_checked_at_plan_time(tiny_models) -> None:
    a, b, c = (tiny_models(f"slerp-{x}", layers=4, seed=i) for i, x in ((1, "a"), (2, "b"), (3, "c")))
    three = (f"merge_method: slerp\nbase_model: {a}\nparameters: {{t: 0.5}}\n"
             f"models:\n  - model: {a}\n  - model: {b}\n  - model: {c}\n")
    assert any("exactly 2 inputs" in p for p in plan_problems(three))
    no_base = f"merge_method: slerp\nparameters: {{t: 0.5}}\nmodels:\n  - model: {a}\n  - model: {b}\n"
    assert any("needs a base_model" in p for p in plan_problems(no_base))
    no_t = f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
    assert any("missing required parameter 't'" in p for p in plan_problems(no_t))
