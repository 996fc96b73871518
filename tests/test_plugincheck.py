"""The plugin test kit (mergehub.testkit.contract) passes a good plugin and names what is wrong with a bad one.

Each plugin here is real: a package and a ``*.dist-info`` (METADATA with the README as long description,
entry_points.txt) written to a folder put on sys.path, which importlib.metadata finds like any installed
distribution. Only the maths, the schema or the README differ between them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mergehub.plugin.specs import MethodSpec
from mergehub.testing import (
    check_architecture_distribution,
    check_method_distribution,
    install_distribution,
    run_cli,
)
from mergehub.testkit.contract import (
    architecture_distribution_problems,
    method_distribution_problems,
    parameter_table,
)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": "Weighted mean of the models.",
    "type": "object",
    "additionalProperties": False,
    "required": ["weight"],
    "properties": {
        "weight": {"type": "number", "description": "How much this model counts.", "x-scope": "input"},
        "normalize": {"type": "boolean", "default": True, "description": "Divide by the sum of the weights.",
                      "x-scope": "shared"},
    },
    "x-mergehub": {"name": "NAME", "base": "ignored", "min_inputs": 1, "blocks": "elementwise"},
}
TABLE = """\
| parameter | scope | type | default | meaning |
|---|---|---|---|---|
| `weight` | per model | number | required | How much this model counts. |
| `normalize` | shared | boolean | `true` | Divide by the sum of the weights. |
"""
MEAN = """
def merge(inputs):
    weights = [p["weight"] for p in inputs.params]
    total = sum(w * x for w, x in zip(weights, inputs.tensors))
    return total / sum(weights) if inputs.shared["normalize"] else total
"""
README = "# {dist}\n\n`merge_method: {name}`: a weighted mean.\n\n{table}\n"
HOOK = """
from mergehub import MethodSpec, hookimpl


@hookimpl
def mergehub_register_methods():
    return [MethodSpec.from_package(__name__)]
"""


def write_distribution(site: Path, dist: str, files: dict[str, str], readme: str) -> None:
    """A distribution as pip installs it: its package files and a dist-info with METADATA and entry points."""
    package = dist.replace("-", "_")
    install_distribution(site, dist, {f"{package}/{path}": text for path, text in files.items()}, readme=readme)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def method_plugin(site: Path, name: str, maths: str = MEAN, table: str = TABLE, schema: dict | None = None,
                  readme: str = README) -> str:
    """Install a method plugin called ``name`` (unique per test: modules stay imported); returns its distribution."""
    dist = f"mergehub-method-{name.replace('_', '-')}"
    schema = json.loads(json.dumps(schema or SCHEMA).replace('"NAME"', json.dumps(name)))
    files = {"__init__.py": HOOK, "method.py": maths, "parameters.schema.json": json.dumps(schema, indent=2)}
    write_distribution(site, dist, files, readme.format(dist=dist, name=name, table=table))
    return dist


def problems_of(dist: str) -> str:
    with pytest.raises(AssertionError) as caught:
        check_method_distribution(dist)
    assert str(caught.value).startswith(f"{dist} breaks the mergehub plugin contract:")
    return str(caught.value)


def test_a_plugin_that_keeps_the_contract_passes(site: Path) -> None:
    dist = method_plugin(site, "kit_good")
    check_method_distribution(dist)
    assert method_distribution_problems(dist) == []


def test_the_table_is_the_generated_one() -> None:
    schema = json.loads(json.dumps(SCHEMA).replace('"NAME"', '"x"'))
    assert parameter_table(MethodSpec("x", "", schema, "m:merge")) == TABLE


def test_a_missing_readme_row_is_named(site: Path) -> None:
    table = "\n".join(line for line in TABLE.splitlines() if "normalize" not in line) + "\n"
    message = problems_of(method_plugin(site, "kit_missing_row", table=table))
    assert "no row for parameter `normalize`" in message
    assert "mergehub schema --method kit_missing_row --markdown" in message
    assert message.count("\n  - ") == 1  # the maths is fine: only the README is reported


def test_a_wrong_default_in_the_table_is_named(site: Path) -> None:
    message = problems_of(method_plugin(site, "kit_wrong_default", table=TABLE.replace("`true`", "`false`")))
    assert "row `normalize`: default is '`false`', the schema gives '`true`'" in message


def test_a_wrong_scope_or_type_and_an_extra_row_are_named(site: Path) -> None:
    extra = "| `scale` | shared | number | `1` | x |\n"
    table = TABLE.replace("| per model | number |", "| shared | integer |") + extra
    message = problems_of(method_plugin(site, "kit_wrong_cells", table=table))
    assert "row `weight`: scope is 'shared', the schema gives 'per model'" in message
    assert "row `weight`: type is 'integer', the schema gives 'number'" in message
    assert "row `scale` names no parameter of the schema" in message


def test_a_readme_without_table_or_recipe_is_named(site: Path) -> None:
    message = problems_of(method_plugin(site, "kit_bare_readme", readme="# {dist}\n\nA weighted mean.\n"))
    assert "never shows `merge_method: kit_bare_readme`" in message
    assert "has no parameter table" in message


def test_a_method_without_parameters_needs_no_table(site: Path) -> None:
    schema = {**SCHEMA, "properties": {}}
    del schema["required"]
    first = "def merge(inputs):\n    return sum(inputs.tensors) / len(inputs.tensors)\n"
    check_method_distribution(method_plugin(site, "kit_no_params", maths=first, table="", schema=schema))


def test_identity_failure_is_named(site: Path) -> None:
    summed = "def merge(inputs):\n    return sum(p['weight'] * x for p, x in zip(inputs.params, inputs.tensors))\n"
    message = problems_of(method_plugin(site, "kit_sum", maths=summed))
    assert "merging 3 identical (6, 5) tensors does not give that tensor" in message


def test_blocks_that_are_not_honoured_are_named(site: Path) -> None:
    # Identical inputs still give that input, but the step size is a statistic of the whole tensor.
    whole = """
    def merge(inputs):
        a, b = inputs.tensors[0], inputs.tensors[-1]
        return a + (b - a) * (b - a).abs().mean()
    """
    message = problems_of(method_plugin(site, "kit_whole_tensor", maths=whole))
    rows = "[(0, 1), (1, 5), (5, 12)]"
    assert f"`blocks: elementwise` is not honoured: a (12, 8) tensor merged in row blocks {rows}" in message
    assert "identical" not in message


def test_a_random_method_must_address_its_draws_by_position(site: Path) -> None:
    """The executor gives every block a generator seeded alike: draws that ignore ``offset`` repeat in each block."""
    schema = {**SCHEMA, "x-mergehub": {**SCHEMA["x-mergehub"], "randomized": True}}
    coin = """
    import torch


    def merge(inputs):
        a, b = inputs.tensors[0], inputs.tensors[-1]
        heads = torch.rand(a.shape, generator=inputs.generator) < 0.5
        return torch.where(heads, a, b)
    """
    message = problems_of(method_plugin(site, "kit_coin", maths=coin, schema=schema))
    assert "`blocks: elementwise` is not honoured" in message
    assert "identical" not in message


def test_an_invalid_schema_is_named_with_every_error(site: Path) -> None:
    schema = {**SCHEMA, "title": "kit_bad_schema", "x-mergehub": {"base": "sometimes"}}
    message = problems_of(method_plugin(site, "kit_bad_schema", schema=schema))
    assert "'name' is a required property" in message  # the name lives in x-mergehub, not in title
    assert "'sometimes' is not one of" in message


def test_a_plugin_that_does_not_import_is_named(site: Path) -> None:
    dist = "mergehub-method-kit-broken"
    write_distribution(site, dist, {"__init__.py": "import mergehub_no_such_module\n"}, "# broken\n")
    message = problems_of(dist)
    assert "loading the entry point `mergehub-method-kit-broken = mergehub_method_kit_broken` raised" in message
    assert "ModuleNotFoundError" in message


def test_a_distribution_that_is_not_installed_is_named() -> None:
    assert "is not installed" in problems_of("mergehub-method-kit-nowhere")


ARCH_HOOK = """
from mergehub import ArchitectureSpec, hookimpl


@hookimpl
def mergehub_register_architectures():
    return [ArchitectureSpec.from_package(__name__, "family.json")]
"""
DEFINITION = {
    "name": "family", "architectures": ["FamilyForCausalLM"], "num_layers_key": "num_hidden_layers",
    "pre_weights": [{"name": "model.embed_tokens.weight", "vocab_axis": 0}],
    "layer_weights": [{"name": "model.layers.{layer}.mlp.weight"}], "post_weights": [{"name": "model.norm.weight"}],
}


def test_an_architecture_plugin_is_checked(site: Path) -> None:
    files = {"__init__.py": ARCH_HOOK, "family.json": json.dumps(DEFINITION)}
    write_distribution(site, "mergehub-arch-kit-good", files, "# Serves `FamilyForCausalLM`.\n")
    check_architecture_distribution("mergehub-arch-kit-good")

    write_distribution(site, "mergehub-arch-kit-quiet", files, "# An architecture.\n")
    assert architecture_distribution_problems("mergehub-arch-kit-quiet") == [
        "architecture 'family': the README never mentions FamilyForCausalLM, which the definition serves"]

    broken = {**DEFINITION, "layer_weights": [{"name": "model.layers.mlp.weight"}]}
    write_distribution(site, "mergehub-arch-kit-broken", {**files, "family.json": json.dumps(broken)},
                       "FamilyForCausalLM\n")
    with pytest.raises(AssertionError, match=r"definition at layer_weights/0/name: .* does not match"):
        check_architecture_distribution("mergehub-arch-kit-broken")


def test_schema_markdown_prints_the_table_the_kit_expects() -> None:
    from mergehub.plugin.registry import build_registry
    from mergehub.testkit.contract import readme_of

    result = run_cli("schema", "--method", "ties", "--markdown")
    assert result.returncode == 0, result.output
    assert result.stdout == parameter_table(build_registry().method("ties"))
    assert result.stdout in readme_of("mergehub-method-ties")
