"""sce: select by variance, weigh by energy, erase by sign; a plain-Python reference and a CLI merge."""

from __future__ import annotations

import math

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_sce.method import merge


def run(base, others, select_topk=1.0, int8_mask=False, weights=None):
    params = [{}] + [{"weight": w} for w in (weights or [1.0] * len(others))]
    return merge(MergeInputs("t", [base, *others], 0, params, {"select_topk": select_topk, "int8_mask": int8_mask}))


def reference(base, others, select_topk=1.0):
    """Wan et al. 2024 (FuseChat) as mergekit computes it, in plain Python over the flattened tensor."""
    b = base.double().flatten().tolist()
    n, count = len(b), len(others)
    tvs = [[xj - bj for xj, bj in zip(x.double().flatten().tolist(), b)] for x in others]
    if select_topk < 1:  # select: the entries whose variance across the models is largest
        variance = [sum((t[j] - sum(u[j] for u in tvs) / count) ** 2 for t in tvs) / count for j in range(n)]
        k = math.floor(sum(v != 0 for v in variance) * select_topk)
        chosen = set(sorted(range(n), key=lambda j: -variance[j])[:k])
        tvs = [[t[j] if j in chosen else 0.0 for j in range(n)] for t in tvs]
    energy = [sum(v * v for v in t) / n for t in tvs]  # calculate: weights from the mean square
    total = sum(energy)
    coefficients = [e / total for e in energy] if abs(total) >= 1e-6 else [1 / count] * count
    out = []
    for j, bj in enumerate(b):  # erase: keep only the entries that agree with the sign of the sum
        elected = 1.0 if sum(t[j] for t in tvs) >= 0 else -1.0
        agree = [i for i, t in enumerate(tvs) if t[j] != 0 and math.copysign(1, t[j]) == elected]
        numerator = sum(coefficients[i] * tvs[i][j] for i in agree)
        out.append(bj + numerator / max(sum(coefficients[i] for i in agree), 1e-6))
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def tensors(n, seed, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.2])
def test_matches_the_reference(select_topk):
    base, *others = tensors(4, seed=1)
    others = [base + (x - base) * s for x, s in zip(others, (0.5, 1.0, 2.0))]  # unequal energies
    torch.testing.assert_close(run(base, others, select_topk).double(), reference(base, others, select_topk),
                               rtol=1e-5, atol=1e-5)


def test_models_weigh_by_the_energy_of_their_task_vectors_by_hand():
    base = torch.zeros(2)
    # mean squares 1 and 9 give weights 0.1 and 0.9: (0.1·1 + 0.9·3) / (0.1 + 0.9)
    torch.testing.assert_close(run(base, [torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])]), torch.tensor([2.8, 2.8]))


def test_sign_consensus_excludes_disagreeing_entries_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 3.0, 0.0])
    b = torch.tensor([-3.0, 1.0, 1.0, 2.0])
    # energies 14/4 and 15/4 give weights 14/29 and 15/29; sums [-2, -1, 4, 2] elect [-, -, +, +]
    ca, cb = 14 / 29, 15 / 29
    expected = torch.tensor([-3.0, -2.0, (ca * 3 + cb * 1) / (ca + cb), 2.0])
    torch.testing.assert_close(run(base, [a, b]), expected)


def test_select_keeps_the_entries_of_largest_variance_by_hand():
    base = torch.zeros(4)
    a = torch.tensor([1.0, 5.0, 2.0, 0.0])
    b = torch.tensor([1.0, -1.0, 3.0, 4.0])
    # variances [0, 9, 0.25, 4]: 3 are non-zero, select_topk 0.7 keeps ⌊2.1⌋ = 2 of them, entries 1 and 3
    torch.testing.assert_close(run(base, [a, b], 0.7).double(), reference(base, [a, b], 0.7))
    assert torch.equal(run(base, [a, b], 0.7)[[0, 2]], torch.zeros(2))


def test_one_fine_tune_comes_back_unless_selection_is_on():
    base, tuned = tensors(2, seed=2)
    torch.testing.assert_close(run(base, [tuned]), tuned, rtol=0, atol=1e-6)
    assert torch.equal(run(base, [tuned], select_topk=0.5), base)  # one model: no variance, nothing selected
    assert torch.equal(run(base, [tuned, tuned], select_topk=0.0), base)


def test_weight_and_int8_mask_change_nothing():
    base, *others = (t.bfloat16() for t in tensors(4, seed=3))
    out = run(base, others, 0.6)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, run(base, others, 0.6, weights=[5.0, -1.0, 0.1]))
    assert torch.equal(out, run(base, others, 0.6, int8_mask=True))


def test_merge_tiny_models_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: sce\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.9}}}}\n  - model: {b}\n"
                      f"parameters: {{select_topk: 0.5}}\ndtype: float32\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    assert "'weight' has no effect with sce" in " ".join(result.output.split())
    out, sb, sa, sbb = load_state(tmp_path / "out"), load_state(base), load_state(a), load_state(b)
    for name in ("model.layers.1.self_attn.k_proj.weight", "model.norm.weight"):
        torch.testing.assert_close(out[name].double(), reference(sb[name], [sa[name], sbb[name]], 0.5), rtol=1e-5, atol=1e-6)
    forward_pass(tmp_path / "out")
