"""task_arithmetic: properties, a plain-Python reference of Y = B + λ·Σ wᵢ(Xᵢ − B), and a CLI merge."""

from __future__ import annotations

import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_task_arithmetic.method import merge

SHARED = {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}


def run(base, others, weights, **shared):
    params = [{}] + [{"weight": w, "density": 1.0} for w in weights]
    return merge(MergeInputs("t", [base, *others], 0, params, {**SHARED, **shared}))


def reference(base, others, weights, normalize=False, lam=1.0):
    """Ilharco et al.: the base plus the scaled sum of the task vectors, entry by entry in plain Python."""
    b, xs = base.double().flatten().tolist(), [x.double().flatten().tolist() for x in others]
    total = sum(weights)
    divisor = total if normalize and abs(total) >= 1e-8 else 1.0
    out = [bj + lam * sum(w * x[j] - w * bj for w, x in zip(weights, xs)) / divisor for j, bj in enumerate(b)]
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def tensors(n, seed, shape=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("lam", [1.0, 0.7, -1.5])
def test_matches_the_reference(normalize, lam):
    base, *others = tensors(4, seed=1)
    weights = [0.5, -0.3, 1.2]
    out = run(base, others, weights, normalize=normalize, **{"lambda": lam})
    torch.testing.assert_close(out.double(), reference(base, others, weights, normalize, lam), rtol=1e-5, atol=1e-5)


def test_weight_one_reproduces_the_fine_tune():
    base, tuned = tensors(2, seed=2)
    out = run(base, [tuned], [1.0])
    assert torch.equal(out, base + (tuned - base))
    torch.testing.assert_close(out, tuned, rtol=0, atol=1e-6)


def test_weight_zero_gives_the_base_and_no_models_give_the_base():
    base, tuned = tensors(2, seed=3)
    assert torch.equal(run(base, [tuned], [0.0]), base)
    assert torch.equal(merge(MergeInputs("t", [base], 0, [{}], SHARED)), base)


def test_zero_weight_sum_is_not_divided_by():
    base, a, b = tensors(3, seed=4)
    torch.testing.assert_close(run(base, [a, b], [1.0, -1.0], normalize=True), run(base, [a, b], [1.0, -1.0]))


def test_bfloat16_stays_bfloat16_and_is_computed_in_it():
    base, a, b = (t.bfloat16() for t in tensors(3, seed=5))
    out = run(base, [a, b], [0.3, 0.6])
    assert out.dtype == torch.bfloat16
    w = torch.tensor([0.3, 0.6], dtype=torch.bfloat16)
    assert torch.equal(out, base + (w[0] * (a - base) + w[1] * (b - base)))  # no float32 detour


def test_density_is_accepted_ignored_and_warned_about_through_the_cli(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("tv-base", 10), ("tv-a", 11), ("tv-b", 12)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.6, density: 0.3}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.4}}}}\n"
                      f"parameters: {{lambda: 0.9}}\ndtype: float32\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    assert "'density' has no effect with task_arithmetic" in " ".join(result.output.split())
    out, sb, sa, sbb = load_state(tmp_path / "out"), load_state(base), load_state(a), load_state(b)
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        expected = reference(sb[name], [sa[name], sbb[name]], [0.6, 0.4], lam=0.9)
        torch.testing.assert_close(out[name].double(), expected, rtol=1e-5, atol=1e-6)
    forward_pass(tmp_path / "out")
