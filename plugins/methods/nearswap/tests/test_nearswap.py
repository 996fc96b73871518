"""nearswap: its properties, an independent element-by-element reference, and a merge through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_nearswap.method import merge


def nearswap(base: torch.Tensor, other: torch.Tensor, t: float) -> torch.Tensor:
    return merge(MergeInputs("t", [base, other], 0, [{}, {}], {"t": t}))


def reference(base: torch.Tensor, other: torch.Tensor, t: float) -> torch.Tensor:
    """w = clamp(t / max(|B − X|, 1e-6), 0, 1), Y = w·X + (1 − w)·B, one Python float at a time."""
    out = []
    for b, x in zip(base.double().flatten().tolist(), other.double().flatten().tolist()):
        w = min(1.0, max(0.0, t / max(abs(b - x), 1e-6)))
        out.append(w * x + (1 - w) * b)
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def pair(seed: int, shape: tuple[int, ...] = (6, 7), dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator, dtype=torch.float64)
    other = base + 0.01 * torch.randn(shape, generator=generator, dtype=torch.float64)
    other.view(-1)[:3] = base.view(-1)[:3] + torch.tensor([0.0, 1e-7, -3e-7], dtype=torch.float64)  # below the 1e-6 floor
    return base.to(dtype), other.to(dtype)


@pytest.mark.parametrize("t", [0.0, 1e-7, 0.001, 0.005, 0.02, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_an_independent_computation(t: float, seed: int) -> None:
    base, other = pair(seed, dtype=torch.float64)
    torch.testing.assert_close(nearswap(base, other, t), reference(base, other, t), rtol=1e-13, atol=1e-15)
    base32, other32 = base.float(), other.float()
    result = nearswap(base32, other32, t)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, reference(base32, other32, t).float(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_t_zero_gives_the_base(dtype: torch.dtype) -> None:
    base, other = pair(2, dtype=dtype)
    result = nearswap(base, other, 0.0)
    assert result.dtype == dtype and torch.equal(result, base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_a_huge_t_gives_the_other_model(dtype: torch.dtype) -> None:
    base, other = pair(3, dtype=dtype)
    assert torch.equal(nearswap(base, other, 1e9), other)


def test_entries_within_t_swap_and_the_others_move_exactly_t() -> None:
    base, other = pair(4, dtype=torch.float64)
    t = 0.005
    result = nearswap(base, other, t)
    near = (other - base).abs() <= t
    assert near.any() and (~near).any()
    assert torch.equal(result[near], other[near])
    moved = (result - base)[~near]
    torch.testing.assert_close(moved.abs(), torch.full_like(moved, t))
    assert torch.equal(moved.sign(), (other - base)[~near].sign())


def test_swaps_by_hand() -> None:
    base = torch.tensor([0.0, 1.0, 2.0, 5.0])
    other = torch.tensor([0.5, 1.0, 1.0, 9.0])
    # |B − X| = [0.5, 0, 1, 4] with t = 1: w = [1, 1 (t/1e-6 clamped), 1, 0.25]
    expected = torch.tensor([0.5, 1.0, 1.0, 0.25 * 9.0 + 0.75 * 5.0])
    assert torch.equal(nearswap(base, other, 1.0), expected)


def test_plugin_declares_its_contract(fresh_registry) -> None:
    spec = fresh_registry.methods["nearswap"].spec
    assert (spec.base, spec.min_inputs, spec.max_inputs, spec.randomized) == ("required", 2, 2, False)
    assert spec.required_params() == ["t"] and spec.param_scope("t") == "shared"
    assert "minimum" not in spec.parameters["properties"]["t"]  # mergekit accepts a negative t (keeps the base)


def test_merge_through_the_cli(tiny_models, tmp_path: Path) -> None:
    base, other = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    recipe = tmp_path / "nearswap.yml"
    # t as a gradient: layer 0 gets 0 (the base), layer 1 gets 0.03
    recipe.write_text(f"merge_method: nearswap\nbase_model: {base}\nmodels:\n  - model: {other}\n"
                      "parameters:\n  t: [0.0, 0.03]\ndtype: float32\n")
    out = tmp_path / "merged"

    result = run_cli("merge", recipe, "--out", out)

    assert result.returncode == 0, result.output
    merged, b, x = load_state(out), load_state(base), load_state(other)
    assert set(merged) == set(b)
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], b["model.embed_tokens.weight"])  # non-layer: t = 0
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.1.input_layernorm.weight"):
        torch.testing.assert_close(merged[name], reference(b[name], x[name], 0.03).float(), rtol=1e-6, atol=1e-7)
        assert not torch.equal(merged[name], b[name]) and not torch.equal(merged[name], x[name])
    forward_pass(out)


def test_negative_t_keeps_the_base() -> None:
    base, other = pair(5)
    assert torch.equal(nearswap(base, other, -0.5), base)
