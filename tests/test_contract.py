"""Every registered method (from the registry, never a hand-kept list) keeps the plugin contract."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import torch

from mergehub import MergeInputs
from mergehub.registry import build_registry, core_schema
from mergehub.specs import import_object

REGISTRY = build_registry()
METHODS = sorted(REGISTRY.methods)


def test_at_least_the_builtin_methods_are_registered():
    assert {"linear", "passthrough"} <= set(METHODS)
    assert not REGISTRY.failures() and not REGISTRY.conflicts


@pytest.mark.parametrize("name", METHODS)
def test_schema_is_valid_and_defaults_validate(name):
    spec = REGISTRY.methods[name].spec
    jsonschema.Draft202012Validator(core_schema("method")).validate(spec.parameters)
    for param, prop in spec.parameters["properties"].items():
        if param not in spec.required_params():
            scalar = {k: v for k, v in prop.items() if not k.startswith("x-")}
            jsonschema.validate(prop["default"], scalar)


@pytest.mark.parametrize("name", METHODS)
def test_readme_lists_every_parameter(name):
    spec = REGISTRY.methods[name].spec
    package = import_object(spec.implementation.split(":")[0].rsplit(".", 1)[0])
    readme = Path(package.__file__).parents[2] / "README.md"
    text = readme.read_text()
    assert f"merge_method: {name}" in text
    for param in spec.param_names():
        assert re.search(rf"^\|\s*`{param}`\s*\|", text, re.M), f"{readme} has no table row for {param}"


def example_value(prop: dict) -> object:
    if prop["type"] == "boolean":
        return prop.get("default", True)
    if "default" in prop:
        return prop["default"]
    low = prop.get("minimum", prop.get("exclusiveMinimum", 0))
    high = prop.get("maximum", prop.get("exclusiveMaximum", 1))
    return (low + high) / 2 if prop["type"] == "number" else int(low) + 1


@pytest.mark.parametrize("name", METHODS)
def test_identical_inputs_give_that_input(name):
    """Merging copies of one tensor must return that tensor, whatever the method."""
    spec = REGISTRY.methods[name].spec
    count = max(spec.min_inputs, min(3, spec.max_inputs or 3))
    base = 0 if spec.base in ("required", "optional") else None
    x = torch.randn(6, 5)
    props = spec.parameters["properties"]
    params = [{p: example_value(props[p]) for p in props if props[p]["x-scope"] == "input"
               or (props[p]["x-scope"] == "non_base" and i != base)} for i in range(count)]
    shared = {p: example_value(props[p]) for p in props if props[p]["x-scope"] == "shared"}
    generator = torch.Generator().manual_seed(0) if spec.randomized else None
    out = spec.load()(MergeInputs("model.layers.0.mlp.up_proj.weight", [x.clone() for _ in range(count)], base,
                                  params, shared, [f"m{i}" for i in range(count)], generator))
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)
