"""What a method plugin is promised about its parameters: integers are ints, ``check`` sees only valid values.

A third-party plugin (a hand-made dist-info on PYTHONPATH, found through its real entry point) declares an
``integer`` parameter and a ``check`` that reads every parameter without defending itself, as the CONTRIBUTING
walk-through allows; the real CLI must give it exactly what its schema promised, or report the recipe's mistake.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mergehub.testing import (
    env_with_site,
    flat_output,
    install_distribution,
    load_state,
    run_cli,
)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": "Y = repeats · Σ wᵢ·Xᵢ, refusing weights that sum to zero",
    "type": "object",
    "additionalProperties": False,
    "required": ["weight"],
    "properties": {
        "weight": {"type": "number", "description": "how much this model counts", "x-scope": "input"},
        "repeats": {"type": "integer", "default": 1, "minimum": 0, "description": "a whole multiplier",
                    "x-scope": "shared"},
    },
    "x-mergehub": {"name": "repeat_sum", "base": "ignored", "min_inputs": 1,
                   "check": "mergehub_repeat_sum.method:check", "blocks": "elementwise"},
}

HOOK = '''
from mergehub import MethodSpec, hookimpl


@hookimpl
def mergehub_register_methods():
    return [MethodSpec.from_package(__name__)]
'''

METHOD = '''
def check(params, shared):
    if sum(p["weight"] for p in params) == 0:  # reads every weight: no "in p" guard
        return "the weights sum to 0"
    return None


def merge(inputs):
    repeats = inputs.shared["repeats"]
    if type(repeats) is not int:
        raise TypeError(f"repeats arrived as {type(repeats).__name__}")
    total = sum(p["weight"] * t.double() for p, t in zip(inputs.params, inputs.tensors))
    return (repeats * total).to(inputs.tensors[0].dtype)
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin, "installed": its package and a dist-info with the entry point, on a directory for PYTHONPATH."""
    files = {"mergehub_repeat_sum/__init__.py": HOOK, "mergehub_repeat_sum/method.py": METHOD,
             "mergehub_repeat_sum/parameters.schema.json": json.dumps(SCHEMA)}
    return install_distribution(tmp_path_factory.mktemp("site"), "mergehub-repeat-sum", files)


def cli(site: Path, *args: str | Path):
    return run_cli(*args, env=env_with_site(site))


def recipe(tmp_path: Path, a: Path, b: Path, weights: str, top: str) -> Path:
    wa, wb = weights.split(";")
    path = tmp_path / "recipe.yaml"
    path.write_text(f"merge_method: repeat_sum\nmodels:\n  - model: {a}\n    parameters: {{{wa}}}\n"
                    f"  - model: {b}\n    parameters: {{{wb}}}\n{top}dtype: float32\n")
    return path


def test_a_whole_float_for_an_integer_parameter_arrives_as_an_int(tmp_path, tiny_models, site):
    a, b = tiny_models("a", seed=1), tiny_models("b", seed=2)
    cfg = recipe(tmp_path, a, b, "weight: 0.5;weight: 0.25", "parameters: {repeats: 3.0}\n")
    result = cli(site, "merge", cfg, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    merged, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    for name, tensor in merged.items():
        expected = 3 * (0.5 * sa[name].double() + 0.25 * sb[name].double())
        torch.testing.assert_close(tensor.double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("verb", ["validate", "merge"])
def test_a_fractional_value_for_an_integer_parameter_is_refused(tmp_path, tiny_models, site, verb):
    a, b = tiny_models("a", seed=1), tiny_models("b", seed=2)
    cfg = recipe(tmp_path, a, b, "weight: 0.5;weight: 0.25", "parameters: {repeats: 2.5}\n")
    result = cli(site, verb, cfg, *(["--out", str(tmp_path / "out")] if verb == "merge" else []))
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    assert "repeats" in flat_output(result.output) and "integer" in flat_output(result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["validate", "merge"])
def test_check_never_sees_a_parameter_the_core_rejected(tmp_path, tiny_models, site, verb):
    """One model lacks its required weight: the problem is that, not a KeyError inside the plugin's check."""
    a, b = tiny_models("a", seed=1), tiny_models("b", seed=2)
    cfg = recipe(tmp_path, a, b, "weight: 0.5;", "")
    result = cli(site, verb, cfg, *(["--out", str(tmp_path / "out")] if verb == "merge" else []))
    text = flat_output(result.output)
    assert result.returncode == 1 and "Traceback" not in result.output and "KeyError" not in text, result.output
    assert "missing required parameter 'weight'" in text


def test_check_still_runs_on_valid_parameters(tmp_path, tiny_models, site):
    a, b = tiny_models("a", seed=1), tiny_models("b", seed=2)
    cfg = recipe(tmp_path, a, b, "weight: 0.5;weight: -0.5", "")
    result = cli(site, "validate", cfg)
    assert result.returncode == 1 and "the weights sum to 0" in flat_output(result.output), result.output
