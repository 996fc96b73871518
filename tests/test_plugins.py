"""Plugin discovery through real entry points, plus in-process checks of the plugin manager and registry.

Third-party plugins are "installed" by writing, on a temporary directory, a hand-made ``NAME-VERSION.dist-info``
(METADATA + entry_points.txt with a ``[mergehub]`` section) next to the plugin's module, then putting that directory
on PYTHONPATH for a real ``mergehub`` subprocess: importlib.metadata finds it exactly as it finds a pip install.
"""

from __future__ import annotations

import json
import re
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pluggy
import pytest
import torch
from mergehub import MethodSpec, hookimpl
from mergehub.common.errors import PluginError
from mergehub.plugin.discovery import PluginManager, make_plugin_manager
from mergehub.plugin.registry import build_registry
from mergehub.testing import (
    CliResult,
    env_with_site,
    install_distribution,
    load_state,
    run_cli,
)


# -- building fake installed distributions ---------------------------------------------------------------------------
def install(site: Path, dist: str, version: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
    return install_distribution(site, dist, files, version=version, entry_points=entry_points)


env_with = env_with_site


def method_schema(name: str, properties: dict, required: list[str] | None = None) -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": name,
        "description": f"test method {name}",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "x-mergehub": {"name": name, "base": "ignored", "min_inputs": 1},
    }
    if required:
        schema["required"] = required
    return json.dumps(schema, indent=2)


PLUGIN_INIT = '''
from importlib import resources

from mergehub import MethodSpec, hookimpl


@hookimpl
def mergehub_register_methods():
    schema = resources.files(__name__).joinpath("parameters.schema.json")
    return [MethodSpec.from_schema_file(str(schema), "{module}.method:merge")]
'''

NEGATE_MEAN = '''
"""Y = -factor * mean(X_i), computed in float64."""
import torch


def merge(inputs):
    stacked = torch.stack([t.double() for t in inputs.tensors])
    return (-inputs.shared["factor"] * stacked.mean(dim=0)).to(inputs.tensors[0].dtype)
'''


def method_plugin(site: Path, dist: str, version: str, module: str, method: str, properties: dict,
                  implementation: str = NEGATE_MEAN) -> Path:
    return install(site, dist, version, {dist: module}, {
        f"{module}/__init__.py": PLUGIN_INIT.replace("{module}", module),
        f"{module}/parameters.schema.json": method_schema(method, properties),
        f"{module}/method.py": implementation,
    })


FACTOR = {"factor": {"type": "number", "default": 1.0, "description": "scale of the negated mean", "x-scope": "shared"}}


def negate_mean_plugin(site: Path) -> Path:
    return method_plugin(site, "mergehub-negate-mean", "1.2.3", "mergehub_negate_mean", "negate_mean", FACTOR)


def plugins_json(env: dict[str, str]) -> list[dict[str, str]]:
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output
    return json.loads(result.stdout)


def methods_of(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in rows if r["kind"] == "method"}


def status_of(rows: list[dict[str, str]], plugin: str) -> str:
    (row,) = [r for r in rows if r["kind"] == "-" and r["name"] == plugin]
    return row["status"]


def assert_clean_failure(result: CliResult, *needles: str) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯]", " ", result.output))
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{result.output}"
    return text


def two_models(tiny_models) -> tuple[Path, Path]:
    return tiny_models("a", layers=4, seed=1), tiny_models("b", layers=4, seed=2)


def recipe(tmp_path: Path, method: str, a: Path, b: Path, params: str = "") -> Path:
    path = tmp_path / "recipe.yml"
    path.write_text(f"merge_method: {method}\n{params}models:\n  - model: {a}\n  - model: {b}\n")
    return path


def linear_recipe(tmp_path: Path, a: Path, b: Path) -> Path:
    path = tmp_path / "linear.yml"
    path.write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n"
                    f"  - model: {b}\n    parameters: {{weight: 3}}\n")
    return path


def installed_methods(text: str) -> set[str]:
    found = re.search(r"installed merge methods: ([^.]*)\.", text)
    assert found, text
    return set(found.group(1).split(", "))


# -- through the real CLI ------------------------------------------------------------------------------------------
def test_third_party_method_is_listed_and_merges(tmp_path, tiny_models):
    site = negate_mean_plugin(tmp_path / "site")
    env = env_with(site)
    a, b = two_models(tiny_models)
    cfg = recipe(tmp_path, "negate_mean", a, b, "parameters:\n  factor: 3\n")
    out = tmp_path / "out"
    with ThreadPoolExecutor(2) as pool:
        merged = pool.submit(run_cli, "merge", cfg, "--out", out, env=env)
        rows = plugins_json(env)
    row = methods_of(rows)["negate_mean"]
    assert (row["distribution"], row["version"], row["status"]) == ("mergehub-negate-mean", "1.2.3", "ok")
    assert methods_of(rows)["linear"]["status"] == "ok"

    assert merged.result().returncode == 0, merged.result().output
    result, sa, sb = load_state(out), load_state(a), load_state(b)
    assert set(result) == set(sa)
    for name, tensor in result.items():
        expected = -1.5 * (sa[name].double() + sb[name].double())  # -3 * mean of two
        torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6)


def test_plugin_whose_import_raises_is_reported_and_others_still_work(tmp_path, tiny_models):
    site = install(tmp_path / "site", "mergehub-broken", "0.3.1", {"mergehub-broken": "mergehub_broken"}, {
        "mergehub_broken/__init__.py": 'raise RuntimeError("boom from the broken plugin")\n',
    })
    env = env_with(site)
    a, b = two_models(tiny_models)
    cfg = linear_recipe(tmp_path, a, b)
    out = tmp_path / "out"
    with ThreadPoolExecutor(2) as pool:
        merged = pool.submit(run_cli, "merge", cfg, "--out", out, env=env)
        rows = plugins_json(env)
    (row,) = [r for r in rows if r["distribution"] == "mergehub-broken"]
    assert row["version"] == "0.3.1"
    assert row["status"].startswith("failed: ")
    assert "RuntimeError" in row["status"] and "boom from the broken plugin" in row["status"]
    assert {"linear", "passthrough"} <= set(methods_of(rows))

    result = merged.result()
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output
    assert "mergehub-broken" in result.output and "boom from the broken plugin" in result.output  # a warning
    merged_state, sa, sb = load_state(out), load_state(a), load_state(b)
    name = "model.layers.2.self_attn.q_proj.weight"
    torch.testing.assert_close(merged_state[name], (sa[name] + 3 * sb[name]) / 4, rtol=0, atol=1e-6)


def test_invalid_parameter_schemas_are_reported_and_skipped(tmp_path, tiny_models):
    site = tmp_path / "site"
    no_description = {"alpha": {"type": "number", "default": 1.0, "x-scope": "shared"}}
    no_scope = {"alpha": {"type": "number", "default": 1.0, "description": "a number"}}
    bad_default = {"alpha": {"type": "number", "default": "high", "description": "a number", "x-scope": "input"}}
    method_plugin(site, "plugin-nodesc", "1.0", "plugin_nodesc", "nodesc", no_description)
    method_plugin(site, "plugin-noscope", "1.0", "plugin_noscope", "noscope", no_scope)
    method_plugin(site, "plugin-baddefault", "1.0", "plugin_baddefault", "baddefault", bad_default)
    method_plugin(site, "plugin-fine", "1.0", "plugin_fine", "fine", FACTOR)
    env = env_with(site)
    a, b = two_models(tiny_models)
    cfg = recipe(tmp_path, "nodesc", a, b)
    with ThreadPoolExecutor(2) as pool:
        validated = pool.submit(run_cli, "validate", cfg, env=env)
        rows = plugins_json(env)

    methods = methods_of(rows)
    assert methods["fine"]["status"] == "ok"
    assert not {"nodesc", "noscope", "baddefault"} & set(methods)
    nodesc, noscope, baddefault = (status_of(rows, f"plugin-{n}") for n in ("nodesc", "noscope", "baddefault"))
    assert nodesc.startswith("failed: ") and "alpha" in nodesc and "'description' is a required property" in nodesc
    assert noscope.startswith("failed: ") and "alpha" in noscope and "'x-scope' is a required property" in noscope
    assert baddefault.startswith("failed: ") and "default of 'alpha'" in baddefault and "'high'" in baddefault

    text = assert_clean_failure(validated.result(), "unknown merge method 'nodesc'", "plugin-nodesc")
    assert "fine" in installed_methods(text) and "nodesc" not in installed_methods(text)


def test_two_distributions_claiming_one_method_name(tmp_path, tiny_models):
    site = tmp_path / "site"
    method_plugin(site, "twin-one", "1.0", "twin_one", "twin", FACTOR)
    method_plugin(site, "twin-two", "2.0", "twin_two", "twin", FACTOR)
    env = env_with(site)
    a, b = two_models(tiny_models)
    cfg = recipe(tmp_path, "twin", a, b)
    out = tmp_path / "out"
    with ThreadPoolExecutor(3) as pool:
        validated = pool.submit(run_cli, "validate", cfg, env=env)
        merged = pool.submit(run_cli, "merge", cfg, "--out", out, env=env)
        rows = plugins_json(env)
    for result in (validated.result(), merged.result()):
        assert_clean_failure(result, "method 'twin'", "'twin-one'", "'twin-two'", "MERGEHUB_DISABLE_PLUGINS")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml", "site"]
    (conflict,) = [r["status"] for r in rows if r["status"].startswith("conflict")]
    assert "twin" in conflict and "twin-one" in conflict and "twin-two" in conflict


def test_disabling_a_plugin_makes_its_method_unknown(tmp_path, tiny_models):
    env = env_with(MERGEHUB_DISABLE_PLUGINS="mergehub-method-linear")
    a, b = two_models(tiny_models)
    cfg = linear_recipe(tmp_path, a, b)
    with ThreadPoolExecutor(2) as pool:
        validated = pool.submit(run_cli, "validate", cfg, env=env)
        rows = plugins_json(env)
    text = assert_clean_failure(validated.result(), f"{cfg}:1 merge_method", "unknown merge method 'linear'")
    installed = installed_methods(text)
    assert "passthrough" in installed and "linear" not in installed
    assert "linear" not in methods_of(rows)
    assert status_of(rows, "mergehub-method-linear") == "disabled"
    assert methods_of(rows)["passthrough"]["status"] == "ok"


def test_load_plugins_restricts_to_a_subset(tmp_path):
    site = negate_mean_plugin(tmp_path / "site")
    with ThreadPoolExecutor(3) as pool:
        only = "mergehub-negate-mean, mergehub-arch-llama"
        subset = pool.submit(plugins_json, env_with(site, MERGEHUB_LOAD_PLUGINS=only))
        builtin = pool.submit(plugins_json, env_with(MERGEHUB_LOAD_PLUGINS="mergehub-method-passthrough"))
        nothing = pool.submit(plugins_json, env_with(MERGEHUB_LOAD_PLUGINS=""))
    rows = subset.result()
    ok = {(r["kind"], r["name"]) for r in rows if r["status"] == "ok"}
    assert ok == {("method", "negate_mean"), ("architecture", "llama"), ("executor", "local")}  # local: the core's own
    others = ("mergehub-method-linear", "mergehub-method-passthrough",
              "mergehub-arch-mistral", "mergehub-io-safetensors")
    for other in others:
        assert status_of(rows, other) == "disabled"
    rows = builtin.result()
    assert {(r["kind"], r["name"]) for r in rows if r["status"] == "ok"} == {("method", "passthrough"), ("executor", "local")}
    assert status_of(rows, "mergehub-method-linear") == "disabled"
    rows = nothing.result()
    assert rows and all(r["status"] == "disabled" for r in rows if r["kind"] != "executor")


def test_plugin_with_unknown_hook_fails_alone(tmp_path):
    site = install(tmp_path / "site", "mergehub-typo", "0.1", {"mergehub-typo": "mergehub_typo"}, {
        "mergehub_typo.py": """
            from mergehub import hookimpl


            @hookimpl
            def mergehub_register_foo():
                return []
            """,
    })
    rows = plugins_json(env_with(site))
    status = status_of(rows, "mergehub-typo")
    assert status.startswith("failed: ") and "mergehub_register_foo" in status
    assert {"linear", "passthrough"} <= set(methods_of(rows))


def test_piped_listing_is_one_whole_row_per_line(tmp_path):
    """Piped, ``mergehub plugins`` prints tab-separated rows that no terminal width cuts, the same rows as --json."""
    long_name = "mergehub-method-" + "-".join(["an-uncommonly-long-distribution-name"] * 3)
    site = method_plugin(tmp_path / "site", long_name, "10.20.30", "mergehub_long_name", "long_named_method", FACTOR)
    env = env_with(site, COLUMNS="80", MERGEHUB_DISABLE_PLUGINS="mergehub-method-linear")
    with ThreadPoolExecutor(2) as pool:
        piped = pool.submit(run_cli, "plugins", env=env)
        rows = plugins_json(env)
    result = piped.result()
    assert result.returncode == 0 and result.stderr == "", result.output
    header, *lines = result.stdout.splitlines()
    columns = ["kind", "name", "distribution", "version", "status"]
    assert header.split("\t") == columns
    table = [line.split("\t") for line in lines]
    assert table == [[row[c] for c in columns] for row in rows]
    assert ["method", "long_named_method", long_name, "10.20.30", "ok"] in table
    assert ["-", "mergehub-method-linear", "mergehub-method-linear", "0.1.0", "disabled"] in table
    assert ["architecture", "(derived)", "mergehub-arch-transformers", "0.1.0", "ok"] in table


# -- in-process: plugin manager and registry ------------------------------------------------------------------------
def spec(name: str, properties: dict | None = None) -> MethodSpec:
    schema = json.loads(method_schema(name, FACTOR if properties is None else properties))
    return MethodSpec(name=name, summary="test", parameters=schema, implementation="builtins:print")


def plugin(name: str, **hooks) -> types.ModuleType:
    """A module object whose functions are hook implementations."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def test_duplicate_method_names_are_a_conflict_naming_both():
    one = plugin("one", mergehub_register_methods=lambda: [spec("dup"), spec("only_one")])
    two = plugin("two", mergehub_register_methods=lambda: [spec("dup")])
    registry = build_registry(make_plugin_manager(entrypoints=False, plugins=[(one, "dist-one"), (two, "dist-two")]))
    assert len(registry.conflicts) == 1
    assert "'dup'" in registry.conflicts[0]
    assert "'dist-one'" in registry.conflicts[0] and "'dist-two'" in registry.conflicts[0]
    assert registry.methods["only_one"].plugin.distribution == "dist-one"
    with pytest.raises(PluginError) as raised:
        registry.check()
    assert "dist-one" in raised.value.message and "dist-two" in raised.value.message


def test_no_conflict_without_duplicates():
    one = plugin("one", mergehub_register_methods=lambda: [spec("first")])
    two = plugin("two", mergehub_register_methods=lambda: [spec("second")])
    registry = build_registry(make_plugin_manager(entrypoints=False, plugins=[(one, "dist-one"), (two, "dist-two")]))
    registry.check()
    assert registry.conflicts == []
    owners = {n: r.plugin.distribution for n, r in registry.methods.items()}
    assert owners == {"first": "dist-one", "second": "dist-two"}


def test_a_bad_spec_fails_its_plugin_only():
    no_description = {"alpha": {"type": "number", "default": 1, "x-scope": "shared"}}
    bad = plugin("bad", mergehub_register_methods=lambda: [spec("bad_ok_part"), spec("bad", no_description)])
    good = plugin("good", mergehub_register_methods=lambda: [spec("good")])
    registry = build_registry(make_plugin_manager(entrypoints=False, plugins=[(bad, "dist-bad"), (good, "dist-good")]))
    assert set(registry.methods) == {"good"}  # nothing of the broken plugin survives, not even its valid spec
    (failure,) = registry.failures()
    assert failure.distribution == "dist-bad" and "description" in failure.error


def test_check_pending_rejects_an_unknown_hook():
    typo = plugin("typo", mergehub_register_foo=lambda: [])
    pm = PluginManager()
    pm.register(typo, name="typo")
    with pytest.raises(pluggy.PluginValidationError, match="mergehub_register_foo"):
        pm.check_pending()
    with pytest.raises(pluggy.PluginValidationError, match="mergehub_register_foo"):
        make_plugin_manager(entrypoints=False, plugins=[(plugin("typo2", mergehub_register_foo=lambda: []), "typo2")])
