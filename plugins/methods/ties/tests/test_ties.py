"""ties: properties, a plain-Python reference of trim / elect / disjoint merge, and a CLI merge."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_ties.method import merge

SHARED = {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, densities=None, **shared):
    densities = densities or [1.0] * len(others)
    params = [{}] + [{"weight": w, "density": d} for w, d in zip(weights, densities)]
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}))


def reference(base, others, weights, densities, normalize=True, rescale=False, lam=1.0):
    """Yadav et al. 2023, with mergekit's conventions, in plain Python over the flattened tensor."""
    b = base.double().flatten().tolist()
    n = len(b)
    contributions = []
    for x, w, density in zip(others, weights, densities):
        delta = [xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)]
        k = n if density >= 1 else max(1, math.floor(density * n))
        keep = set(sorted(range(n), key=lambda j: -abs(delta[j]))[:k])  # trim: the k largest magnitudes
        trimmed = [d if j in keep else 0.0 for j, d in enumerate(delta)]
        if rescale and sum(map(abs, trimmed)) >= 1e-7:
            factor = sum(map(abs, delta)) / sum(map(abs, trimmed))
            trimmed = [t * factor for t in trimmed]
        contributions.append([w * t for t in trimmed])
    out = []
    for j in range(n):
        elected = 1.0 if sum(c[j] for c in contributions) >= 0 else -1.0  # elect by summed value, 0 → +
        agree = [i for i, c in enumerate(contributions) if c[j] != 0 and math.copysign(1, c[j]) == elected]
        total = sum(contributions[i][j] for i in agree)
        divisor = sum(weights[i] for i in agree) or 1.0
        out.append(b[j] + lam * (total / divisor if normalize else total))
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def tensors(n, seed, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rescale", [False, True])
def test_matches_the_reference(normalize, rescale):
    base, *others = tensors(4, seed=1)
    weights, densities = [0.5, -0.3, 1.2], [0.5, 0.2, 0.7]
    out = run(base, others, weights, densities, normalize=normalize, rescale=rescale, **{"lambda": 0.8})
    expected = reference(base, others, weights, densities, normalize, rescale, lam=0.8)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_sign_consensus_excludes_disagreeing_entries_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 3.0, 0.0])
    b = torch.tensor([-3.0, 1.0, 1.0, 2.0])
    # sums [-2, -1, 4, 2] elect [-, -, +, +]; a's 1 and b's 1 disagree; a's 0 takes no part
    torch.testing.assert_close(run(base, [a, b], [1.0, 1.0]), torch.tensor([-3.0, -2.0, 2.0, 2.0]))
    torch.testing.assert_close(run(base, [a, b], [1.0, 1.0], normalize=False), torch.tensor([-3.0, -2.0, 4.0, 2.0]))


def test_the_weight_sign_takes_part_in_the_election():
    base, a, b = torch.zeros(2), torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])
    # D = [[1, 1], [-2, 2]]: entry 0 elects −, entry 1 elects +
    torch.testing.assert_close(run(base, [a, b], [1.0, -2.0], normalize=False), torch.tensor([-2.0, 3.0]))


def test_trimming_keeps_the_largest_density_fraction():
    base = torch.zeros(10)
    x = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 4.0, -0.4, 0.01, 1.0])
    out = run(base, [x], [1.0], [0.3])
    assert torch.equal(out, torch.where(x.abs() >= 2.0, x, 0.0))
    assert torch.count_nonzero(run(base, [x], [1.0], [0.01])) == 1  # at least one entry survives


def test_density_one_is_task_arithmetic_with_normalize_when_signs_agree():
    base, magnitudes = tensors(2, seed=2)
    g = torch.Generator().manual_seed(3)
    signs = torch.randn(magnitudes.shape, generator=g).sign()
    others = [base + signs * (magnitudes.abs() + 0.1) * s for s in (0.5, 1.0, 2.0)]
    weights = [0.2, 0.5, 0.3]
    expected = base + sum(w * (x - base) for w, x in zip(weights, others)) / sum(weights)  # task arithmetic, normalized
    torch.testing.assert_close(run(base, others, weights), expected, rtol=1e-6, atol=1e-6)


def test_weight_one_density_one_reproduces_the_fine_tune():
    base, tuned = tensors(2, seed=4)
    out = run(base, [tuned], [1.0], **{"lambda": 1.0})
    torch.testing.assert_close(out, tuned, rtol=0, atol=1e-6)


def test_int8_mask_changes_nothing():
    base, *others = (t.bfloat16() for t in tensors(4, seed=5))
    a = run(base, others, [0.4, 0.4, 0.2], [0.5, 0.5, 0.5])
    b = run(base, others, [0.4, 0.4, 0.2], [0.5, 0.5, 0.5], int8_mask=True)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_merge_tiny_models_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: ties\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.6, density: 0.4}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.4, density: 0.7}}}}\ndtype: float32\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, sb, sa, sbb = load_state(tmp_path / "out"), load_state(base), load_state(a), load_state(b)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        expected = reference(sb[name], [sa[name], sbb[name]], [0.6, 0.4], [0.4, 0.7])
        torch.testing.assert_close(out[name].double(), expected, rtol=1e-5, atol=1e-6)
    forward_pass(tmp_path / "out")
