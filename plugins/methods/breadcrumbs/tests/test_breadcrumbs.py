"""breadcrumbs: properties of the outlier/small-entry mask, a plain-Python reference, and a CLI merge."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_breadcrumbs.method import merge

SHARED = {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, densities, gammas, **shared):
    params = [{}] + [{"weight": w, "density": d, "gamma": g} for w, d, g in zip(weights, densities, gammas)]
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}))


def crumbs(delta, density, gamma):
    """Davari and Belilovsky 2024 as mergekit sizes it: of n entries sorted by magnitude, drop the ⌊gamma·n⌋
    largest and as many of the smallest as needed to keep ⌊density·n⌋ (fewer outliers if they do not fit)."""
    n = len(delta)
    if density >= 1:
        return list(delta)
    target, top = math.floor(density * n), math.floor(gamma * n)
    bottom = max(0, n - target - top)
    order = sorted(range(n), key=lambda j: abs(delta[j]))
    keep = set(order[bottom:bottom + target])
    return [d if j in keep else 0.0 for j, d in enumerate(delta)]


def reference(base, others, weights, densities, gammas, normalize=False, rescale=False, lam=1.0):
    b = base.double().flatten().tolist()
    total = [0.0] * len(b)
    for x, w, density, gamma in zip(others, weights, densities, gammas):
        delta = [xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)]
        kept = crumbs(delta, density, gamma)
        if rescale and sum(map(abs, kept)) >= 1e-7:
            kept = [k * sum(map(abs, delta)) / sum(map(abs, kept)) for k in kept]
        total = [t + w * k for t, k in zip(total, kept)]
    divisor = sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else 1.0
    return torch.tensor([bj + lam * t / divisor for bj, t in zip(b, total)], dtype=torch.float64).reshape(base.shape)


def tensors(n, seed, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("rescale", [False, True])
def test_matches_the_reference(normalize, rescale):
    base, *others = tensors(4, seed=1)
    weights, densities, gammas = [0.5, -0.3, 1.2], [0.5, 0.9, 0.3], [0.05, 0.2, 0.01]
    out = run(base, others, weights, densities, gammas, normalize=normalize, rescale=rescale, **{"lambda": 1.1})
    expected = reference(base, others, weights, densities, gammas, normalize, rescale, lam=1.1)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_drops_the_largest_and_the_smallest_by_hand():
    base = torch.zeros(10)
    x = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 4.0, -0.4, 0.01, 1.0])
    # n = 10, density 0.5 keeps 5, gamma 0.2 drops the 2 largest (-5, 4), so the 3 smallest (0.01, 0.05, 0.1) go too
    out = run(base, [x], [1.0], [0.5], [0.2])
    assert torch.equal(out, torch.tensor([0.0, 0.0, 0.3, 2.0, -0.2, 0.0, 0.0, -0.4, 0.0, 1.0]))


def test_fewer_outliers_are_dropped_when_gamma_does_not_fit():
    base = torch.zeros(10)
    x = torch.arange(1.0, 11.0)
    # density 0.8 keeps 8; gamma 0.5 would drop 5 but only 2 can go: the 2 largest
    assert torch.equal(run(base, [x], [1.0], [0.8], [0.5]), torch.where(x <= 8, x, 0.0))


@pytest.mark.parametrize("density", [0.1, 0.37, 0.9])
def test_keeps_exactly_floor_density_n_entries(density):
    base, tuned = tensors(2, seed=2, shape=(20, 30))
    assert torch.count_nonzero(run(base, [tuned], [1.0], [density], [0.01]) - base) == math.floor(density * 600)


def test_density_one_and_weight_one_reproduce_the_fine_tune():
    base, tuned = tensors(2, seed=3)
    out = run(base, [tuned], [1.0], [1.0], [0.3])  # gamma has no effect at density 1
    torch.testing.assert_close(out, tuned, rtol=0, atol=1e-6)


def test_merge_tiny_models_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: breadcrumbs\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.6, density: 0.6, gamma: 0.05}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.4, density: 0.8}}}}\ndtype: float32\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, sb, sa, sbb = load_state(tmp_path / "out"), load_state(base), load_state(a), load_state(b)
    for name in ("model.layers.1.mlp.gate_proj.weight", "model.norm.weight"):
        expected = reference(sb[name], [sa[name], sbb[name]], [0.6, 0.4], [0.6, 0.8], [0.05, 0.01])
        torch.testing.assert_close(out[name].double(), expected, rtol=1e-5, atol=1e-6)
    forward_pass(tmp_path / "out")
