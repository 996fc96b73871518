"""della_linear: magnitude-ranked drops and a weighted sum, against a plain-Python reference and a CLI merge."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import build_registry, forward_pass, load_state, run_cli
from mergehub_method_della_linear.method import merge

SHARED = {"normalize": False, "rescale": True, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, densities, epsilons, seed=0, **shared):
    params = [{}] + [{"weight": w, "density": d, "epsilon": e} for w, d, e in zip(weights, densities, epsilons)]
    generator = torch.Generator().manual_seed(seed)
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}, generator=generator))


def reference(base, others, weights, densities, epsilons, seed=0, normalize=False, rescale=True, lam=1.0):
    """Deep et al. 2024 without the election: per row, keep with probability density − ε + 2ε·r (r the magnitude
    rank scaled to [0, 1]), masks drawn in model order from a generator seeded like the method's; L1 rescale; sum."""
    generator = torch.Generator().manual_seed(seed)
    b = base.double().flatten().tolist()
    total = [0.0] * len(b)
    for x, w, density, epsilon in zip(others, weights, densities, epsilons):
        delta = [xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)]
        if density < 1:
            rows = (x - base).double().reshape(-1, (x - base).shape[-1] if x.dim() > 1 else x.numel()).tolist()
            p = []
            for row in rows:
                rank = {j: r for r, j in enumerate(sorted(range(len(row)), key=lambda j: abs(row[j])))}
                p.append([density - epsilon + 2 * epsilon * rank[j] / (len(row) - 1) for j in range(len(row))])
            keep = torch.bernoulli(torch.tensor(p, dtype=torch.float32), generator=generator).flatten().tolist()
        else:
            keep = [1.0] * len(b)
        kept = [d * m for d, m in zip(delta, keep)]
        if rescale and density < 1 and sum(map(abs, kept)) >= 1e-7:
            kept = [k * sum(map(abs, delta)) / sum(map(abs, kept)) for k in kept]
        total = [t + w * k for t, k in zip(total, kept)]
    divisor = sum(weights) if normalize and abs(sum(weights)) >= 1e-8 else 1.0
    return torch.tensor([bj + lam * t / divisor for bj, t in zip(b, total)], dtype=torch.float64).reshape(base.shape)


def tensors(n, seed, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("shape", [(6, 9), (40,)])
@pytest.mark.parametrize("normalize,rescale", [(False, True), (True, False)])
def test_matches_the_reference(shape, normalize, rescale):
    base, *others = tensors(4, seed=1, shape=shape)
    weights, densities, epsilons = [0.5, -0.3, 1.2], [0.5, 1.0, 0.3], [0.2, 0.1, 0.25]
    out = run(base, others, weights, densities, epsilons, seed=4, normalize=normalize, rescale=rescale, **{"lambda": 1.2})
    expected = reference(base, others, weights, densities, epsilons, 4, normalize, rescale, lam=1.2)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_keeps_about_density_and_the_l1_norm():
    base, tuned = tensors(2, seed=2, shape=(100, 300))
    delta = (run(base, [tuned], [1.0], [0.4], [0.3]) - base).double()
    kept = torch.count_nonzero(delta).item() / delta.numel()
    assert abs(kept - 0.4) < 5 * math.sqrt(0.24 / delta.numel())
    torch.testing.assert_close(delta.abs().sum(), (tuned - base).double().abs().sum(), rtol=1e-4, atol=0)


def test_epsilon_zero_keeps_every_entry_with_probability_density():
    base, tuned = tensors(2, seed=3, shape=(50, 80))
    kept = run(base, [tuned], [1.0], [0.3], [0.0], rescale=False) != base
    assert abs(kept.double().mean().item() - 0.3) < 5 * math.sqrt(0.21 / kept.numel())


def test_weight_one_density_one_reproduces_the_fine_tune():
    base, tuned = tensors(2, seed=5)
    torch.testing.assert_close(run(base, [tuned], [1.0], [1.0], [0.15]), tuned, rtol=0, atol=1e-6)


def test_the_check_is_registered_and_rejects_epsilon_too_wide():
    check = build_registry().methods["della_linear"].spec.load_check()
    assert check([{}, {"weight": 1, "density": 0.2, "epsilon": 0.1}], SHARED) is None
    assert "use an epsilon below 0.2" in check([{}, {"weight": 1, "density": 0.2, "epsilon": 0.2}], SHARED)


def test_merge_tiny_models_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: della_linear\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 1.0, density: 0.5, epsilon: 0.3}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.0, density: 0.5}}}}\ndtype: float32\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out", "--seed", "5")
    assert result.returncode == 0, result.output
    out, sb, sa = load_state(tmp_path / "out"), load_state(base), load_state(a)
    for name, tensor in out.items():  # model b weighs 0: what is left is a's rescaled, sparsified task vector
        merged, delta = (tensor - sb[name]).double(), (sa[name] - sb[name]).double()
        torch.testing.assert_close(merged.abs().sum(), delta.abs().sum(), rtol=1e-4, atol=0)
    forward_pass(tmp_path / "out")
