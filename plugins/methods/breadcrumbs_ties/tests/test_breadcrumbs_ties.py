"""breadcrumbs_ties: breadcrumbs masks plus the TIES election, against a plain-Python reference and a CLI merge."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_breadcrumbs_ties.method import merge

SHARED = {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, densities, gammas, **shared):
    params = [{}] + [{"weight": w, "density": d, "gamma": g} for w, d, g in zip(weights, densities, gammas)]
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}))


def reference(base, others, weights, densities, gammas, normalize=False, rescale=False, lam=1.0):
    """Breadcrumbs masks (drop the ⌊gamma·n⌋ largest and the smallest, keep ⌊density·n⌋), then the TIES sum election."""
    b = base.double().flatten().tolist()
    n = len(b)
    contributions = []
    for x, w, density, gamma in zip(others, weights, densities, gammas):
        delta = [xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)]
        if density < 1:
            target, top = math.floor(density * n), math.floor(gamma * n)
            bottom = max(0, n - target - top)
            keep = set(sorted(range(n), key=lambda j: abs(delta[j]))[bottom:bottom + target])
            kept = [d if j in keep else 0.0 for j, d in enumerate(delta)]
        else:
            kept = delta
        if rescale and sum(map(abs, kept)) >= 1e-7:
            kept = [k * sum(map(abs, delta)) / sum(map(abs, kept)) for k in kept]
        contributions.append([w * k for k in kept])
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
@pytest.mark.parametrize("rescale", [False, True])
def test_matches_the_reference(normalize, rescale):
    base, *others = tensors(4, seed=1)
    weights, densities, gammas = [0.5, -0.3, 1.2], [0.5, 0.9, 0.3], [0.05, 0.2, 0.01]
    out = run(base, others, weights, densities, gammas, normalize=normalize, rescale=rescale, **{"lambda": 0.7})
    expected = reference(base, others, weights, densities, gammas, normalize, rescale, lam=0.7)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_sign_consensus_excludes_disagreeing_entries_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 3.0, 0.0])
    b = torch.tensor([-3.0, 1.0, 1.0, 2.0])
    # density 1 keeps all; sums [-2, -1, 4, 2] elect [-, -, +, +]; the disagreeing 1s are left out
    torch.testing.assert_close(run(base, [a, b], [1.0, 1.0], [1.0, 1.0], [0.01, 0.01]), torch.tensor([-3.0, -2.0, 4.0, 2.0]))
    torch.testing.assert_close(run(base, [a, b], [1.0, 1.0], [1.0, 1.0], [0.01, 0.01], normalize=True),
                               torch.tensor([-3.0, -2.0, 2.0, 2.0]))


def test_a_dropped_outlier_takes_no_part_in_the_election():
    base = torch.zeros(5)
    a = torch.tensor([-9.0, 1.0, 2.0, 3.0, 0.5])  # density 0.8 and gamma 0.2 drop only its outlier -9
    b = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    out = run(base, [a, b], [1.0, 1.0], [0.8, 1.0], [0.2, 0.0])
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, 3.0, 4.0, 1.5]))


def test_weight_one_density_one_reproduces_the_fine_tune():
    base, tuned = tensors(2, seed=3)
    torch.testing.assert_close(run(base, [tuned], [1.0], [1.0], [0.01]), tuned, rtol=0, atol=1e-6)


def test_merge_tiny_models_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: breadcrumbs_ties\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.6, density: 0.6, gamma: 0.05}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.4, density: 0.8}}}}\n"
                      f"parameters: {{normalize: true}}\ndtype: float32\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, sb, sa, sbb = load_state(tmp_path / "out"), load_state(base), load_state(a), load_state(b)
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.norm.weight"):
        expected = reference(sb[name], [sa[name], sbb[name]], [0.6, 0.4], [0.6, 0.8], [0.05, 0.01], normalize=True)
        torch.testing.assert_close(out[name].double(), expected, rtol=1e-5, atol=1e-6)
    forward_pass(tmp_path / "out")
