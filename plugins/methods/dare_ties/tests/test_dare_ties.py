"""dare_ties: properties (sign consensus, density 1, reproducibility), a plain-Python reference, CLI merges."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, run_cli
from mergehub_method_dare_ties.method import merge

SHARED = {"normalize": False, "rescale": True, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, densities, seed=0, **shared):
    params = [{}] + [{"weight": w, "density": d} for w, d in zip(weights, densities)]
    generator = torch.Generator().manual_seed(seed)
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}, generator=generator))


def reference(base, others, weights, densities, seed=0, normalize=False, rescale=True, lam=1.0):
    """DARE (Bernoulli drop, L1 rescale) then the TIES election and disjoint sum/mean, in plain Python.
    The masks are drawn in model order from a generator seeded like the method's (none for density 1)."""
    generator = torch.Generator().manual_seed(seed)
    b = base.double().flatten().tolist()
    contributions = []
    for x, w, density in zip(others, weights, densities):
        delta = [xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)]
        keep = [1.0] * len(b) if density >= 1 else \
            torch.bernoulli(torch.full(base.shape, density), generator=generator).flatten().tolist()
        dropped = [d * m for d, m in zip(delta, keep)]
        before, after = sum(map(abs, delta)), sum(map(abs, dropped))
        if rescale and density < 1 and before >= 1e-7 and after >= 1e-7:
            dropped = [d * before / after for d in dropped]
        contributions.append([w * d for d in dropped])
    out = []
    for j, bj in enumerate(b):
        elected = 1.0 if sum(c[j] for c in contributions) >= 0 else -1.0
        agree = [i for i, c in enumerate(contributions) if c[j] != 0 and math.copysign(1, c[j]) == elected]
        total = sum(contributions[i][j] for i in agree)
        divisor = sum(weights[i] for i in agree) or 1.0
        out.append(bj + lam * (total / divisor if normalize else total))
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def tensors(n, seed, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("rescale", [True, False])
def test_matches_the_reference(normalize, rescale):
    base, *others = tensors(4, seed=1)
    weights, densities = [0.5, -0.3, 1.2], [0.5, 0.8, 0.3]
    out = run(base, others, weights, densities, seed=5, normalize=normalize, rescale=rescale, **{"lambda": 0.9})
    expected = reference(base, others, weights, densities, 5, normalize, rescale, lam=0.9)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_sign_consensus_excludes_disagreeing_entries_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 3.0, 0.0])
    b = torch.tensor([-3.0, 1.0, 1.0, 2.0])
    # density 1 drops nothing; sums [-2, -1, 4, 2] elect [-, -, +, +]
    torch.testing.assert_close(run(base, [a, b], [1.0, 1.0], [1.0, 1.0]), torch.tensor([-3.0, -2.0, 4.0, 2.0]))
    torch.testing.assert_close(run(base, [a, b], [1.0, 1.0], [1.0, 1.0], normalize=True),
                               torch.tensor([-3.0, -2.0, 2.0, 2.0]))


def test_density_one_changes_nothing():
    base, *others = tensors(4, seed=2)
    weights = [0.6, 0.3, 0.5]
    out = run(base, others, weights, [1.0] * 3)
    torch.testing.assert_close(out.double(), reference(base, others, weights, [1.0] * 3), rtol=1e-6, atol=1e-6)
    agreeing = [base + (others[0] - base).abs() * s for s in (0.5, 1.0, 2.0)]  # no conflicts: a plain weighted sum
    expected = base + sum(w * (x - base) for w, x in zip(weights, agreeing))
    torch.testing.assert_close(run(base, agreeing, weights, [1.0] * 3), expected, rtol=1e-6, atol=1e-6)


def test_weight_one_density_one_reproduces_the_fine_tune():
    base, tuned = tensors(2, seed=3)
    torch.testing.assert_close(run(base, [tuned], [1.0], [1.0]), tuned, rtol=0, atol=1e-6)


def test_same_generator_seed_gives_the_same_result_on_one_or_two_threads():
    base, *others = tensors(4, seed=4, shape=(64, 128))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(base, others, [0.5, 0.3, 0.2], [0.3, 0.5, 0.7], seed=9)
        torch.set_num_threads(2)
        two = run(base, others, [0.5, 0.3, 0.2], [0.3, 0.5, 0.7], seed=9)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_the_same_seed_gives_the_same_bytes_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: dare_ties\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.5, density: 0.5}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.5, density: 0.3}}}}\ndtype: bfloat16\n")
    for out in ("one", "two"):
        result = run_cli("merge", recipe, "--out", tmp_path / out, "--seed", "42")
        assert result.returncode == 0, result.output
    first, second = (tmp_path / "one/model.safetensors").read_bytes(), (tmp_path / "two/model.safetensors").read_bytes()
    assert first == second
    forward_pass(tmp_path / "one")
