"""Nothing in a recipe, a checkpoint or a model directory runs code or writes outside the output.

Every attack is real: a pickle whose ``__reduce__`` runs a shell command, Python classes beside a model that
transformers would import (``auto_map``), YAML tags that build Python objects, stage names that climb out of the
intermediate directory, a plugin module on ``PYTHONPATH`` without an installed distribution. Each one would
create a marker file if it ran; the tests assert the marker never appears and that the user gets one clear error
(or, where mergehub falls back, a warning) through the real CLI.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from mergehub.testing import CliResult, build_tiny_model, forward_pass, run_cli
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def said(result: CliResult) -> str:
    """What the user read, with the terminal's line wrapping (and the error panel's frame) undone."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())


def refused(result: CliResult, *needles: str) -> None:
    """One clear error: non-zero exit, no traceback, and every needle in what the user sees."""
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in said(result), f"{needle!r} not in:\n{result.output}"


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# -- pickles ---------------------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def peft_adapter(base: Path, out: Path) -> Path:
    """A real PEFT LoRA adapter of ``base`` (safetensors)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_adapter_bin_is_refused_and_never_runs(tmp_path: Path, tiny_models: Any, legacy: bool) -> None:
    base = tiny_models("sec-base", layers=1)
    adapter = peft_adapter(base, tmp_path / "adapter")
    marker = tmp_path / "PWNED"
    state: dict[str, Any] = dict(load_file(adapter / "adapter_model.safetensors"))
    state["payload"] = Payload(marker)
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(state, adapter / "adapter_model.bin", _use_new_zipfile_serialization=not legacy)
    cfg = write(tmp_path / "lora.yaml", f"merge_method: passthrough\nmodels:\n  - model: {base}+{adapter}\n")
    for verb in ("validate", "merge"):
        result = run_cli(verb, cfg, "--out", tmp_path / "out") if verb == "merge" else run_cli(verb, cfg)
        refused(result, "adapter_model.bin", "would run code")
        assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "out").exists()


def _calls(tree_: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    """(dotted name, call) for every call of ``a.b(...)`` / ``b(...)``."""
    for node in ast.walk(tree_):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                yield f"{func.value.id}.{func.attr}", node
            elif isinstance(func, ast.Name):
                yield func.id, node


def shipped_sources() -> list[Path]:
    """The code users install: the core and every plugin's package (not tests)."""
    files = list((ROOT / "core" / "mergehub").rglob("*.py")) + list((ROOT / "plugins").glob("*/*/src/**/*.py"))
    return sorted(f for f in files if "tests" not in f.parts)


def test_every_unpickling_and_yaml_load_in_shipped_code_is_safe() -> None:
    """Every torch.load passes weights_only=True; pickle, unsafe YAML loaders and trusted remote code appear nowhere."""
    sources = shipped_sources()
    assert len(sources) > 40
    torch_loads = 0
    for path in sources:
        for name, call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                torch_loads += 1
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: torch.load without weights_only=True"
            assert name not in ("pickle.load", "pickle.loads", "pickle.Unpickler", "yaml.unsafe_load", "yaml.full_load",
                                "yaml.unsafe_load_all", "yaml.full_load_all", "dill.load", "joblib.load"), where
            if name in ("yaml.load", "yaml.load_all"):
                loader = keywords.get("Loader")
                assert isinstance(loader, ast.Name) and loader.id in ("SafeLoader", "CSafeLoader", "RecipeLoader"), where
            flag = keywords.get("trust_remote_code")
            assert not (isinstance(flag, ast.Constant) and flag.value is True), f"{where}: trust_remote_code=True"
    assert torch_loads >= 2  # the pytorch IO plugin and the LoRA .bin reader


def test_recipe_loader_is_the_safe_loader() -> None:
    import yaml
    from mergehub.recipe.yamlsource import RecipeLoader

    assert issubclass(RecipeLoader, yaml.SafeLoader)


# -- remote code -----------------------------------------------------------------------------------------------------
CUSTOM_TOKENIZER = '''
from pathlib import Path

Path({marker!r}).touch()

from transformers import PreTrainedTokenizerFast


class CustomTokenizer(PreTrainedTokenizerFast):
    """A tokenizer class shipped with the model: importing this file is running the model author's code."""
'''


def remote_tokenizer_model(directory: Path, marker: Path) -> Path:
    """A tiny llama whose tokenizer_config.json maps AutoTokenizer to a class in custom_tokenizer.py beside it."""
    build_tiny_model(directory, layers=1, tokenizer=True, seed=11)
    (directory / "custom_tokenizer.py").write_text(CUSTOM_TOKENIZER.format(marker=str(marker)))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "custom_tokenizer.CustomTokenizer"]}
    config["tokenizer_class"] = "CustomTokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


@pytest.fixture
def remote(tmp_path: Path, tiny_models: Any) -> dict[str, Any]:
    """``custom`` (remote-code tokenizer), ``plain`` (an ordinary tokenizer), the marker and an isolated modules cache."""
    marker = tmp_path / "IMPORTED"
    return {
        "custom": remote_tokenizer_model(tmp_path / "custom", marker),
        "plain": tiny_models("sec-plain", layers=1, tokenizer=True, seed=12),
        "marker": marker,
        # where transformers copies remote code before importing it: never the user's real cache
        "env": {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"},
    }


def union_recipe(path: Path, first: Path, second: Path, extra: str = "") -> Path:
    return write(path, f"""
        merge_method: linear
        models:
          - model: {first}
            parameters: {{weight: 0.5}}
          - model: {second}
            parameters: {{weight: 0.5}}
        tokenizer_source: union
        {extra}
        """)


@pytest.mark.parametrize("verb", ["merge", "validate", "plan"])
def test_remote_code_tokenizer_base_is_refused_without_the_flag(tmp_path: Path, remote: dict[str, Any], verb: str) -> None:
    cfg = union_recipe(tmp_path / "union.yaml", remote["custom"], remote["plain"])
    args = ["--out", tmp_path / "out"] if verb != "validate" else []
    result = run_cli(verb, cfg, *args, env=remote["env"])
    refused(result, "needs remote code", "custom_tokenizer.CustomTokenizer", "--trust-remote-code", "tokenizer_source")
    assert not remote["marker"].exists(), "the model's tokenizer code was imported"
    assert not (tmp_path / "out").exists()


def test_remote_code_tokenizer_of_another_model_falls_back_with_a_warning(tmp_path: Path,
                                                                         remote: dict[str, Any]) -> None:
    """§1.7: a model whose tokenizer does not load is taken to share the base's vocabulary; the warning says why."""
    cfg = union_recipe(tmp_path / "union.yaml", remote["plain"], remote["custom"])
    result = run_cli("merge", cfg, "--out", tmp_path / "out", env=remote["env"])
    assert result.returncode == 0, result.output
    assert "needs remote code" in said(result) and "only --trust-remote-code allows" in said(result), result.output
    assert not remote["marker"].exists(), "the model's tokenizer code was imported"
    forward_pass(tmp_path / "out")


def test_trust_remote_code_lets_the_tokenizer_load(tmp_path: Path, remote: dict[str, Any]) -> None:
    cfg = union_recipe(tmp_path / "union.yaml", remote["custom"], remote["plain"])
    result = run_cli("merge", cfg, "--out", tmp_path / "out", "--trust-remote-code", env=remote["env"])
    assert result.returncode == 0, result.output
    assert remote["marker"].exists(), "--trust-remote-code should let transformers import the tokenizer class"
    saved = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert saved.get("auto_map"), saved  # the output needs the same code, and says so
    words = [json.loads((d / "tokenizer.json").read_text())["model"]["vocab"] for d in (tmp_path / "out", remote["plain"])]
    assert words[0] == words[1]  # both tiny tokenizers are <unk> <s> </s> w3 … w63: the union is the same
    forward_pass(tmp_path / "out")


def test_trust_remote_code_is_documented_in_every_planning_verb() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "--trust-remote-code" in readme
    for verb in ("merge", "mega", "plan", "validate"):
        result = run_cli(verb, "--help")
        assert result.returncode == 0 and "--trust-remote-code" in result.stdout, (verb, result.output)


MODEL_CODE = '''
from pathlib import Path

Path({marker!r}).touch()
'''


def remote_model_code(directory: Path, marker: Path) -> Path:
    """A tiny llama whose config.json maps AutoConfig and AutoModel* to classes in .py files beside it."""
    build_tiny_model(directory, layers=1, tokenizer=True, seed=13)
    for name in ("configuration_custom", "modeling_custom"):
        (directory / f"{name}.py").write_text(MODEL_CODE.format(marker=str(marker)))
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModel": "modeling_custom.CustomModel",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def test_model_code_in_config_auto_map_is_never_imported(tmp_path: Path, remote: dict[str, Any]) -> None:
    """mergehub never instantiates models; loading their tokenizers (union, chat template) imports no config code,
    even with --trust-remote-code, which is for tokenizer classes only."""
    model = remote_model_code(tmp_path / "model-code", remote["marker"])
    cfg = union_recipe(tmp_path / "union.yaml", model, remote["plain"], "chat_template: chatml")
    for flags in ([], ["--trust-remote-code"]):
        result = run_cli("merge", cfg, "--out", tmp_path / "out", "--force", *flags, env=remote["env"])
        assert result.returncode == 0, result.output
        assert not remote["marker"].exists(), f"model code was imported ({flags})"
    plain = write(tmp_path / "plain.yaml", f"merge_method: passthrough\nmodels:\n  - model: {model}\n"
                                           "chat_template: chatml\n")
    result = run_cli("merge", plain, "--out", tmp_path / "plain-out", env=remote["env"])
    assert result.returncode == 0, result.output
    assert not remote["marker"].exists()


def test_trusted_tokenizer_loading_still_imports_no_config_code(tmp_path: Path, remote: dict[str, Any]) -> None:
    """transformers' own AutoTokenizer(trust_remote_code=True) would import configuration_custom.py; ours does not."""
    from mergehub.models.tokenizer import load_tokenizer

    model = remote_model_code(tmp_path / "model-code", remote["marker"])
    assert load_tokenizer(model, trust_remote_code=True) is not None
    assert not remote["marker"].exists()


# -- YAML ------------------------------------------------------------------------------------------------------------
PYTHON_TAGS = {
    "object/apply": '!!python/object/apply:os.system ["touch {marker}"]',
    "object/new": '!!python/object/new:os.system ["touch {marker}"]',
    "name": "!!python/name:os.system",
    "module": "!!python/module:os",
    "object": "!!python/object:subprocess.Popen {{args: [touch, {marker}]}}",
    "local tag": '!<tag:yaml.org,2002:python/object/apply:os.system> ["touch {marker}"]',
}


@pytest.mark.parametrize("tag", list(PYTHON_TAGS))
def test_python_yaml_tags_are_a_clear_error(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "RAN"
    value = PYTHON_TAGS[tag].format(marker=marker)
    cfg = write(tmp_path / "evil.yaml", f"""
        merge_method: linear
        models:
          - model: {value}
            parameters: {{weight: 1.0}}
        """)
    for verb in ("validate", "merge"):
        refused(run_cli(verb, cfg, cwd=tmp_path), f"{cfg}:3", "python/", "is not allowed", "remove the tag")
        assert not marker.exists()


def test_python_tags_in_a_later_document_are_an_error_too(tmp_path: Path) -> None:
    marker = tmp_path / "RAN"
    cfg = write(tmp_path / "evil.yaml", f"""
        name: one
        merge_method: passthrough
        models: [{{model: a}}]
        ---
        merge_method: passthrough
        base_model: !!python/object/apply:os.system ["touch {marker}"]
        models: [{{model: one}}]
        """)
    refused(run_cli("merge", cfg, cwd=tmp_path), f"{cfg}:6")
    assert not marker.exists()


# -- writing only inside --out and the intermediate directory --------------------------------------------------------
BAD_STAGE_NAMES = {
    "parent": '".."',
    "dot": '"."',
    "climbs": '"../../escaped"',
    "slash": '"sub/dir"',
    "absolute": '"/tmp/mergehub-escaped"',
    "home": '"~"',
    "home-path": '"~/escaped"',
    "backslash": '"..\\\\escaped"',
    "nul": '"stage\\0x"',
    "hidden": '".hidden"',
    "dash": '"-rf"',
    "drive": '"C:escaped"',
    "space": '"two words"',
    "too-long": '"' + "a" * 300 + '"',
    "empty": '""',
    "number": "12",
    "list": "[a, b]",
}


@pytest.mark.parametrize("case", list(BAD_STAGE_NAMES))
def test_stage_names_that_are_not_plain_names_are_refused(tmp_path: Path, tiny_models: Any, case: str) -> None:
    a = tiny_models("sec-a", layers=1)
    work = tmp_path / "work"
    work.mkdir()
    cfg = write(work / "stages.yaml", f"""
        merge_method: passthrough
        name: {BAD_STAGE_NAMES[case]}
        models: [{{model: {a}}}]
        ---
        merge_method: passthrough
        models: [{{model: {a}}}]
        """)
    before = tree(tmp_path)
    result = run_cli("merge", cfg, "--out", work / "out", cwd=work)
    refused(result, "not a plain name", f"{cfg}:2")
    assert tree(tmp_path) == before, "a refused recipe wrote something"
    assert not Path("/tmp/mergehub-escaped").exists()


def test_stage_name_rule_accepts_ordinary_names() -> None:
    from mergehub.plan.stages import STAGE_NAME

    for name in ("a", "stage_one", "blend-2", "v1.5", "_draft", "étape", "a" * 100):
        assert STAGE_NAME.fullmatch(name), name


def test_multi_stage_merge_writes_only_inside_out_and_the_intermediate_dir(tmp_path: Path, tiny_models: Any) -> None:
    models = tmp_path / "models"
    for name, seed in (("a", 21), ("b", 22)):
        shutil.copytree(tiny_models(f"sec-{name}", layers=2, tokenizer=True, seed=seed), models / name)
    work = tmp_path / "work"
    work.mkdir()
    cfg = write(work / "stages.yaml", f"""
        name: blend.v1
        merge_method: slerp
        base_model: {models / 'a'}
        models: [{{model: {models / 'a'}}}, {{model: {models / 'b'}}}]
        parameters: {{t: 0.3}}
        ---
        name: stacked
        merge_method: passthrough
        slices:
          - sources: [{{model: blend.v1, layer_range: [0, 1]}}]
          - sources: [{{model: {models / 'b'}, layer_range: [1, 2]}}]
        ---
        merge_method: linear
        models:
          - model: stacked
            parameters: {{weight: 0.5}}
          - model: blend.v1
            parameters: {{weight: 0.5}}
        """)
    out, intermediate = work / "final", work / "inter"
    before = tree(tmp_path)
    result = run_cli("merge", cfg, "--out", out, "--intermediate-dir", intermediate, cwd=work)
    assert result.returncode == 0, result.output
    created = tree(tmp_path) - before
    assert created, "nothing was written"
    strays = sorted(p for p in created if p not in (out, intermediate) and out not in p.parents
                    and intermediate not in p.parents)
    assert not strays, f"written outside --out and the intermediate directory: {strays}"
    assert {p.name for p in intermediate.iterdir()} == {"blend.v1", "stacked"}
    forward_pass(out)


def test_no_recipe_key_names_a_file_to_write(fresh_registry: Any) -> None:
    """The only recipe value that becomes part of an output path is a stage's name (checked above)."""
    from mergehub.recipe.schema import recipe_schema

    keys = set(recipe_schema(None)["properties"])
    assert keys == {"name", "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
                    "tokenizer_source", "tokenizer", "chat_template"}, "a new recipe key: check it cannot name a file"


# -- plugins ---------------------------------------------------------------------------------------------------------
SNEAKY = '''
from pathlib import Path

from mergehub import MethodSpec, hookimpl

Path({marker!r}).touch()


@hookimpl
def mergehub_register_methods():
    return [MethodSpec(name="sneaky", summary="should never load", implementation="os:system", parameters={{
        "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sneaky", "description": "sneaky",
        "type": "object", "additionalProperties": False, "properties": {{}}}})]
'''


def test_plugin_modules_on_pythonpath_without_a_distribution_are_not_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "LOADED"
    site = tmp_path / "site"
    for module in ("mergehub_sneaky", "mergehub_method_sneaky", "mergehub_plugins"):
        (site / module).mkdir(parents=True)
        (site / module / "__init__.py").write_text(SNEAKY.format(marker=str(marker)))
    env = {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for extra in ({}, {"MERGEHUB_LOAD_PLUGINS": "mergehub_sneaky,mergehub_method_sneaky,mergehub_plugins"}):
        listing = run_cli("plugins", "--json", env=env | extra)
        assert listing.returncode == 0, listing.output
        assert "sneaky" not in listing.stdout
        refused(run_cli("schema", "--method", "sneaky", env=env | extra), "unknown merge method 'sneaky'")
        assert not marker.exists(), "a module was imported without an installed distribution's entry point"
    # the control: the same module behind a dist-info entry point is found, so the check above is not vacuous
    info = site / "mergehub_sneaky-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mergehub-sneaky\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mergehub]\nmergehub-sneaky = mergehub_sneaky\n")
    listing = run_cli("plugins", "--json", env=env)
    assert listing.returncode == 0 and "sneaky" in listing.stdout, listing.output
    assert marker.exists()
