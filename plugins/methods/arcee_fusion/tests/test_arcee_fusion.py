"""arcee_fusion: an independent reference in plain Python, its properties, its sampling, and a merge through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_arcee_fusion.method import merge


def fusion(base: torch.Tensor, other: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return merge(MergeInputs("t", [base, other], 0, [{}, {}], {}, ["base", "other"], generator))


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def reference_importance(base: torch.Tensor, other: torch.Tensor) -> list[float]:
    """|X − B| times the row's KL(p‖q), p = softmax(X) + 1e-8, q = softmax(B) + 1e-8, in Python floats."""
    width = base.shape[-1] if base.dim() else 1
    b_rows = base.double().reshape(-1, width).tolist()
    x_rows = other.double().reshape(-1, width).tolist()
    importance = []
    for b, x in zip(b_rows, x_rows):
        p = [v + 1e-8 for v in softmax(x)]
        q = [v + 1e-8 for v in softmax(b)]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        importance += [abs(xi - bi) * kl for xi, bi in zip(x, b)]
    return importance


def reference_threshold(importance: list[float]) -> float:
    """median + 1.5·(Q3 − Q1), each quantile the sorted element at index ⌊q·(n − 1)⌋."""
    ordered = sorted(importance)
    last = len(ordered) - 1
    q1, median, q3 = (ordered[math.floor(q * last)] for q in (0.25, 0.5, 0.75))
    return median + 1.5 * (q3 - q1)


def pair(seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator, dtype=torch.float64)
    other = base + 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64)
    return base.to(dtype), other.to(dtype)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(12, 9), (40,), (3, 4, 5)])
def test_keeps_exactly_the_entries_at_or_above_the_threshold(seed: int, shape: tuple[int, ...]) -> None:
    base, other = pair(seed, shape)
    importance = reference_importance(base, other)
    threshold = reference_threshold(importance)
    keep = torch.tensor([v >= threshold for v in importance]).reshape(shape)
    assert 0 < keep.sum() < keep.numel() / 2  # a minority of outliers, by construction of the fence

    result = fusion(base, other)

    assert torch.equal(result, torch.where(keep, base + (other - base), base))


@pytest.mark.parametrize("seed", range(3))
def test_float32_agrees_with_the_reference_away_from_the_threshold(seed: int) -> None:
    base, other = pair(seed, (16, 24), torch.float32)
    importance = torch.tensor(reference_importance(base, other), dtype=torch.float64).reshape(base.shape)
    threshold = reference_threshold(importance.flatten().tolist())
    result = fusion(base, other)
    assert result.dtype == torch.float32
    changed = result != base
    clear = (importance - threshold).abs() > 1e-5 * threshold  # the fp32 mask may flip only at the cut-off
    assert torch.equal(changed[clear], (importance >= threshold)[clear])
    assert torch.equal(result[changed], (base + (other - base))[changed])


def test_a_one_dimensional_tensor_keeps_the_outliers_of_its_changes() -> None:
    # one row: the KL factor is common, so the kept entries are the Tukey outliers of |X − B|
    base = torch.zeros(9)
    other = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 5.0])
    # sorted |X − B|: Q1 = 0.3, median = 0.5, Q3 = 0.7 → threshold 0.5 + 1.5·0.4 = 1.1: only 5.0 passes
    assert torch.equal(fusion(base, other), torch.tensor([0.0] * 8 + [5.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_identical_models_give_the_base(dtype: torch.dtype) -> None:
    base, _ = pair(5, (6, 7), dtype)
    result = fusion(base, base.clone())
    assert result.dtype == dtype and torch.equal(result, base)


def test_small_tensors_do_not_depend_on_the_generator() -> None:
    base, other = pair(6, (50, 40), torch.float32)
    expected = fusion(base, other)
    assert torch.equal(fusion(base, other, seed=1), expected)
    assert torch.equal(fusion(base, other, seed=2), expected)


def test_large_tensors_sample_reproducibly_from_the_generator() -> None:
    # more than 10⁶ elements: the quantiles come from 10⁶ draws with replacement
    base, other = pair(7, (1001, 1000), torch.float32)
    first = fusion(base, other, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(fusion(base, other, seed=3), first)  # same seed, same bytes, whatever the thread count
    finally:
        torch.set_num_threads(threads)
    other_seed = fusion(base, other, seed=4)
    # the sampled threshold is close to the exact one (written out here in float64): the masks barely differ
    p = torch.softmax(other.double(), dim=-1) + 1e-8
    q = torch.softmax(base.double(), dim=-1) + 1e-8
    importance = (other - base).abs().double() * (p * (p / q).log()).sum(dim=-1, keepdim=True)
    ordered = importance.flatten().sort().values
    last = ordered.numel() - 1
    threshold = ordered[int(0.5 * last)] + 1.5 * (ordered[int(0.75 * last)] - ordered[int(0.25 * last)])
    exact_kept = (importance >= threshold).sum().item()
    for result in (first, other_seed):
        kept = (result != base).sum().item()
        assert abs(kept - exact_kept) < 0.002 * base.numel(), (kept, exact_kept)


def test_plugin_declares_its_contract(fresh_registry) -> None:
    spec = fresh_registry.methods["arcee_fusion"].spec
    assert (spec.base, spec.min_inputs, spec.max_inputs, spec.randomized) == ("required", 2, 2, True)
    assert spec.param_names() == ["normalize", "rescale", "int8_mask"]
    assert set(spec.ignored_params()) == {"normalize", "rescale", "int8_mask"}  # accepted, with a warning


def test_merge_through_the_cli(tiny_models, tmp_path: Path) -> None:
    base, other = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    recipe = tmp_path / "arcee_fusion.yml"
    recipe.write_text(f"merge_method: arcee_fusion\nbase_model: {base}\nmodels:\n  - model: {other}\ndtype: float32\n")
    out = tmp_path / "merged"

    result = run_cli("merge", recipe, "--out", out, "--seed", "5")

    assert result.returncode == 0, result.output
    merged, b, x = load_state(out), load_state(base), load_state(other)
    assert set(merged) == set(b)
    kept = 0
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.post_attention_layernorm.weight", "lm_head.weight"):
        importance = torch.tensor(reference_importance(b[name], x[name]), dtype=torch.float64).reshape(b[name].shape)
        threshold = reference_threshold(importance.flatten().tolist())
        changed = merged[name] != b[name]
        clear = (importance - threshold).abs() > 1e-5 * threshold
        assert torch.equal(changed[clear], (importance >= threshold)[clear]), name
        assert torch.equal(merged[name][changed], (b[name] + (x[name] - b[name]))[changed]), name
        kept += int(changed.sum())
    assert kept > 0
    forward_pass(out)
