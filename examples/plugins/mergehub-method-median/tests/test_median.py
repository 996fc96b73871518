"""Tests of the median method: its maths on small tensors, then a real merge through the CLI."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import numpy
import pytest
import torch
from mergehub import MergeInputs
from mergehub.testing import forward_pass, load_state, run_cli
from mergehub_method_median.method import merge


def median_of(*tensors: torch.Tensor, base: int | None = None) -> torch.Tensor:
    return merge(MergeInputs("t", list(tensors), base, [{} for _ in tensors], {}))


def reference(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The median computed independently: statistics.median over plain Python floats."""
    columns = zip(*(t.double().flatten().tolist() for t in tensors))
    return torch.tensor([statistics.median(c) for c in columns], dtype=torch.float64).reshape(tensors[0].shape)


def random_tensors(n: int, seed: int, shape: tuple[int, ...] = (5, 7)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_median_of_identical_models_is_that_model(n: int, dtype: torch.dtype) -> None:
    x = random_tensors(1, seed=n)[0].to(dtype)
    result = median_of(*[x.clone() for _ in range(n)])
    assert result.dtype == dtype
    assert torch.equal(result, x)


@pytest.mark.parametrize("seed", range(5))
def test_median_of_three_is_the_middle_value(seed: int) -> None:
    tensors = random_tensors(3, seed)
    result = median_of(*tensors)
    # An odd count selects one of the inputs' values: exact, no rounding anywhere.
    assert torch.equal(result, reference(tensors).float())
    assert torch.equal(result, torch.from_numpy(numpy.median(numpy.stack([t.numpy() for t in tensors]), axis=0)))


@pytest.mark.parametrize("n", [2, 4, 6])
def test_even_count_takes_the_mean_of_the_two_middle_values(n: int) -> None:
    tensors = random_tensors(n, seed=n)
    torch.testing.assert_close(median_of(*tensors), reference(tensors).float())


def test_two_models_give_their_average() -> None:
    a, b = random_tensors(2, seed=7)
    torch.testing.assert_close(median_of(a, b), (a + b) / 2)


@pytest.mark.parametrize("n", [3, 4])
def test_order_of_the_models_does_not_matter(n: int) -> None:
    tensors = random_tensors(n, seed=11)
    expected = median_of(*tensors)
    for order in itertools.permutations(tensors):
        assert torch.equal(median_of(*order), expected)


def test_base_model_has_no_special_role() -> None:
    tensors = random_tensors(3, seed=3)
    assert torch.equal(median_of(*tensors, base=0), median_of(*tensors))


def test_half_precision_is_computed_in_float32_and_cast_back() -> None:
    tensors = [t.to(torch.bfloat16) for t in random_tensors(4, seed=5)]
    result = median_of(*tensors)
    assert result.dtype == torch.bfloat16
    assert torch.equal(result, reference(tensors).float().to(torch.bfloat16))


def test_plugin_registers_the_method(fresh_registry) -> None:
    registered = fresh_registry.methods["median"]
    assert registered.plugin.distribution == "mergehub-method-median"
    assert registered.spec.param_names() == []
    assert registered.spec.load() is merge


def test_merge_three_tiny_models_through_the_cli(tiny_models, tmp_path: Path) -> None:
    models = [tiny_models(f"median-{i}", seed=i) for i in (1, 2, 3)]
    recipe = tmp_path / "median.yml"
    entries = "".join(f"  - model: {m}\n" for m in models)
    recipe.write_text(f"merge_method: median\nmodels:\n{entries}dtype: float32\n")
    out = tmp_path / "merged"

    result = run_cli("merge", recipe, "--out", out)

    assert result.returncode == 0, result.output
    merged = load_state(out)
    inputs = [load_state(m) for m in models]
    assert set(merged) == set(inputs[0])
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"):
        expected = numpy.median(numpy.stack([state[name].numpy() for state in inputs]), axis=0)
        assert torch.equal(merged[name], torch.from_numpy(expected)), name
    forward_pass(out)
