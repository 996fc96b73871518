"""della: magnitude-ranked keep probabilities, the density ± epsilon check at plan time, a plain-Python
reference, and a CLI merge."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import build_registry, forward_pass, run_cli
from mergehub_method_della.method import merge

SHARED = {"normalize": True, "rescale": True, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, densities, epsilons, seed=0, **shared):
    params = [{}] + [{"weight": w, "density": d, "epsilon": e} for w, d, e in zip(weights, densities, epsilons)]
    generator = torch.Generator().manual_seed(seed)
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}, generator=generator))


def keep_probabilities(delta_rows, density, epsilon):
    """Deep et al. 2024 (MAGPRUNE): within a row, rank r ∈ [0, 1] by magnitude, keep with density − ε + 2ε·r."""
    out = []
    for row in delta_rows:
        n = len(row)
        order = sorted(range(n), key=lambda j: abs(row[j]))
        rank = {j: position for position, j in enumerate(order)}
        out.append([density - epsilon + 2 * epsilon * (rank[j] / (n - 1) if n > 1 else 0.0) for j in range(n)])
    return out


def reference(base, others, weights, densities, epsilons, seed=0, normalize=True, rescale=True, lam=1.0):
    """MAGPRUNE masks drawn, in model order, from a generator seeded like the method's; L1 rescale; TIES election."""
    generator = torch.Generator().manual_seed(seed)
    rows_of = (lambda t: t.double().reshape(1, -1) if t.dim() <= 1 else t.double())
    b = base.double().flatten().tolist()
    contributions = []
    for x, w, density, epsilon in zip(others, weights, densities, epsilons):
        delta = [xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)]
        if density < 1:
            p = keep_probabilities(rows_of(x - base).tolist(), density, epsilon)
            keep = torch.bernoulli(torch.tensor(p, dtype=torch.float32), generator=generator).flatten().tolist()
        else:
            keep = [1.0] * len(b)
        kept = [d * m for d, m in zip(delta, keep)]
        if rescale and density < 1 and sum(map(abs, kept)) >= 1e-7:
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


@pytest.mark.parametrize("shape", [(6, 9), (40,)])
@pytest.mark.parametrize("normalize,rescale", [(True, True), (False, False), (False, True)])
def test_matches_the_reference(shape, normalize, rescale):
    base, *others = tensors(4, seed=1, shape=shape)
    weights, densities, epsilons = [0.5, -0.3, 1.2], [0.5, 0.7, 0.3], [0.2, 0.1, 0.25]
    out = run(base, others, weights, densities, epsilons, seed=3, normalize=normalize, rescale=rescale, **{"lambda": 0.9})
    expected = reference(base, others, weights, densities, epsilons, 3, normalize, rescale, lam=0.9)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_larger_entries_are_kept_more_often():
    base, tuned = tensors(2, seed=2, shape=(200, 500))
    delta = tuned - base
    kept = run(base, [tuned], [1.0], [0.5], [0.4], rescale=False) != base
    rank = delta.abs().argsort(dim=-1).argsort(dim=-1).double() / 499
    for low, high in ((0.0, 0.2), (0.4, 0.6), (0.8, 1.0001)):
        bucket = (rank >= low) & (rank < high)
        expected = (0.1 + 0.8 * rank[bucket]).mean().item()  # density − ε + 2ε·r, averaged over the bucket
        n = int(bucket.sum())
        assert abs(kept[bucket].double().mean().item() - expected) < 5 * math.sqrt(0.25 / n), (low, high)
    assert abs(kept.double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / kept.numel())


def test_sign_consensus_excludes_disagreeing_entries_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 3.0, 0.0])
    b = torch.tensor([-3.0, 1.0, 1.0, 2.0])
    out = run(base, [a, b], [1.0, 1.0], [1.0, 1.0], [0.15, 0.15])  # density 1 keeps all; normalize is on
    torch.testing.assert_close(out, torch.tensor([-3.0, -2.0, 2.0, 2.0]))


def test_density_one_changes_nothing_and_weight_one_gives_the_fine_tune():
    base, tuned = tensors(2, seed=4)
    torch.testing.assert_close(run(base, [tuned], [1.0], [1.0], [0.15]), tuned, rtol=0, atol=1e-6)


def test_same_generator_seed_gives_the_same_result_on_one_or_two_threads():
    base, *others = tensors(3, seed=5, shape=(64, 256))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(base, others, [0.5, 0.5], [0.4, 0.6], [0.1, 0.3], seed=8)
        torch.set_num_threads(2)
        two = run(base, others, [0.5, 0.5], [0.4, 0.6], [0.1, 0.3], seed=8)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_the_check_names_every_bad_density_epsilon_pair():
    check = build_registry().methods["della"].spec.load_check()
    assert check([{}, {"weight": 1, "density": 0.5, "epsilon": 0.2}], SHARED) is None
    assert check([{}, {"weight": 1, "density": 1.0, "epsilon": 0.5}], SHARED) is None  # density 1 keeps everything
    problem = check([{}, {"weight": 1, "density": 0.5, "epsilon": 0.5}, {"weight": 1, "density": 0.3, "epsilon": 0.35}], SHARED)
    assert "density ± epsilon must lie strictly between 0 and 1" in problem
    assert "density 0.5 with epsilon 0.5 gives [0, 1]" in problem and "density 0.3 with epsilon 0.35" in problem
    assert "use an epsilon below 0.3" in problem


def test_merge_tiny_models_through_the_cli_and_reject_a_bad_epsilon(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    text = (f"merge_method: della\nbase_model: {base}\nmodels:\n"
            f"  - {{model: {a}, parameters: {{weight: 0.6, density: 0.5, epsilon: 0.2}}}}\n"
            f"  - {{model: {b}, parameters: {{weight: 0.4, density: 0.7}}}}\ndtype: bfloat16\n")
    recipe.write_text(text)
    result = run_cli("merge", recipe, "--out", tmp_path / "out", "--seed", "1")
    assert result.returncode == 0, result.output
    forward_pass(tmp_path / "out")

    recipe.write_text(text.replace("epsilon: 0.2", "epsilon: 0.5"))
    result = run_cli("validate", recipe)
    assert result.returncode == 1
    message = " ".join(result.output.split())
    assert "density ± epsilon must lie strictly between 0 and 1, but density 0.5 with epsilon 0.5 gives [0, 1]" in message
    assert "r.yml:3" in message and "Traceback" not in result.output
