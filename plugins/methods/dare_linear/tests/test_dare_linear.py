"""dare_linear: properties (mask density, L1 rescale, reproducibility), a plain-Python reference, a CLI merge."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_dare_linear.method import merge

SHARED = {"normalize": False, "rescale": True, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, densities, seed=0, **shared):
    params = [{}] + [{"weight": w, "density": d} for w, d in zip(weights, densities)]
    generator = torch.Generator().manual_seed(seed)
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}, generator=generator))


def reference(base, others, weights, densities, seed=0, normalize=False, rescale=True, lam=1.0):
    """Yu et al. 2024 with mergekit's L1 rescale, in plain Python. The masks are Bernoulli(density) draws
    taken in model order from a generator seeded like the method's (none for density 1)."""
    generator = torch.Generator().manual_seed(seed)
    b = base.double().flatten().tolist()
    total = [0.0] * len(b)
    for x, w, density in zip(others, weights, densities):
        delta = [xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)]
        keep = [1.0] * len(b) if density >= 1 else \
            torch.bernoulli(torch.full(base.shape, density), generator=generator).flatten().tolist()
        dropped = [d * m for d, m in zip(delta, keep)]
        before, after = sum(map(abs, delta)), sum(map(abs, dropped))
        if rescale and density < 1 and before >= 1e-7 and after >= 1e-7:
            dropped = [d * before / after for d in dropped]
        total = [t + w * d for t, d in zip(total, dropped)]
    divisor = sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else 1.0
    return torch.tensor([bj + lam * t / divisor for bj, t in zip(b, total)], dtype=torch.float64).reshape(base.shape)


def tensors(n, seed, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("rescale", [True, False])
def test_matches_the_reference(normalize, rescale):
    base, *others = tensors(4, seed=1)
    weights, densities = [0.5, -0.3, 1.2], [0.5, 1.0, 0.3]
    out = run(base, others, weights, densities, seed=7, normalize=normalize, rescale=rescale, **{"lambda": 1.3})
    expected = reference(base, others, weights, densities, 7, normalize, rescale, lam=1.3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_the_mask_keeps_about_density_and_the_rescale_keeps_the_l1_norm():
    base, tuned = tensors(2, seed=2, shape=(300, 400))
    density, n = 0.3, base.numel()
    delta = (run(base, [tuned], [1.0], [density]) - base).double()
    kept = torch.count_nonzero(delta).item() / n
    assert abs(kept - density) < 5 * math.sqrt(density * (1 - density) / n)  # binomial, 5 sigma
    torch.testing.assert_close(delta.abs().sum(), (tuned - base).double().abs().sum(), rtol=1e-4, atol=0)
    factor = (delta[delta != 0] / (tuned - base).double()[delta != 0])
    torch.testing.assert_close(factor, torch.full_like(factor, factor[0].item()), rtol=1e-4, atol=0)  # one factor
    assert 1 / density * 0.95 < factor[0] < 1 / density * 1.05  # ≈ 1/density, but not exactly


def test_without_rescale_kept_entries_are_unchanged():
    base, tuned = tensors(2, seed=3, shape=(40, 50))
    out = run(base, [tuned], [1.0], [0.5], rescale=False)
    assert torch.all((out == base) | (out == base + (tuned - base)))


def test_density_one_changes_nothing():
    base, *others = tensors(3, seed=4)
    weights = [0.7, 0.4]
    out = run(base, others, weights, [1.0, 1.0])
    assert torch.equal(out, base + (weights[0] * (others[0] - base) + weights[1] * (others[1] - base)))


def test_weight_one_density_one_reproduces_the_fine_tune():
    base, tuned = tensors(2, seed=5)
    torch.testing.assert_close(run(base, [tuned], [1.0], [1.0]), tuned, rtol=0, atol=1e-6)


def test_same_seed_same_result_on_one_or_two_threads_and_another_seed_differs():
    base, *others = tensors(3, seed=6, shape=(64, 128))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(base, others, [0.5, 0.5], [0.4, 0.6], seed=11)
        torch.set_num_threads(2)
        two = run(base, others, [0.5, 0.5], [0.4, 0.6], seed=11)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert not torch.equal(one, run(base, others, [0.5, 0.5], [0.4, 0.6], seed=12))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_its_dtype_and_the_l1_norm(dtype):
    base, tuned = (t.to(dtype) for t in tensors(2, seed=8, shape=(50, 60)))
    out = run(base, [tuned], [1.0], [0.4])
    assert out.dtype == dtype
    torch.testing.assert_close((out.double() - base.double()).abs().sum(), (tuned - base).double().abs().sum(), rtol=2e-2, atol=0)


def test_merge_tiny_models_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: dare_linear\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 1.0, density: 0.5}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.0, density: 0.5}}}}\ndtype: float32\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out", "--seed", "3")
    assert result.returncode == 0, result.output
    out, sb, sa = load_state(tmp_path / "out"), load_state(base), load_state(a)
    kept = total = 0
    for name, tensor in out.items():
        merged, delta = (tensor - sb[name]).double(), (sa[name] - sb[name]).double()
        torch.testing.assert_close(merged.abs().sum(), delta.abs().sum(), rtol=1e-4, atol=0)  # L1 kept per tensor
        kept, total = kept + torch.count_nonzero(merged).item(), total + merged.numel()
    assert abs(kept / total - 0.5) < 5 * math.sqrt(0.25 / total)
    forward_pass(tmp_path / "out")
