"""The catalog of what this repository's plugins provide equals what they register, and errors use it.

When a recipe needs a method, a model family or a weight format that no installed plugin provides, the error names
the distribution that would (``pip install mergehub-method-ties``) and the whole standard set
(``pip install "mergehub[standard]"``), or says that the distribution is installed but switched off.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from mergehub.common.errors import MergehubError
from mergehub.models.loader import open_reader
from mergehub.plugin import catalog
from mergehub.plugin.discovery import make_plugin_manager
from mergehub.plugin.registry import build_registry
from mergehub.testing import CliResult, run_cli

ROOT = Path(__file__).resolve().parents[1]
REPO_PLUGINS = {tomllib.loads(p.read_text(encoding="utf-8"))["project"]["name"]: p.parent
                for p in ROOT.glob("plugins/*/*/pyproject.toml")}
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
EXAMPLE_MODEL = ROOT / "examples" / "models" / "llama-a"


def flat(result: CliResult) -> str:
    """The output without rich's panel borders and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


# -- the catalog is what the plugins register -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry():
    return build_registry()


def provided(table) -> dict[str, str]:
    return {name: r.plugin.distribution for name, r in table.items() if r.plugin.distribution in REPO_PLUGINS}


def test_every_repository_plugin_is_installed_and_loads(registry):
    records = {r.distribution: r for r in registry.plugins.values()}
    assert set(REPO_PLUGINS) <= set(records), "install the development set-up: pip install -r requirements.txt"
    for distribution in REPO_PLUGINS:
        assert records[distribution].status == "ok", (distribution, records[distribution].status)


def test_methods(registry):
    assert catalog.METHODS == provided(registry.methods)


def test_architectures(registry):
    served = {arch: r.plugin.distribution for r in registry.architectures.values()
              if r.plugin.distribution in REPO_PLUGINS for arch in r.spec.architectures}
    assert catalog.ARCHITECTURES == served


def test_the_deriver(registry):
    assert [r.distribution for _, r in registry.derivers if r.distribution in REPO_PLUGINS] == [catalog.DERIVER]


def test_io_backends(registry):
    assert catalog.IO_BACKENDS == provided(registry.io_backends)


def test_moe_formats(registry):
    assert catalog.MOE_FORMATS == provided(registry.moe_formats)


def test_executors(registry):
    assert catalog.EXECUTORS == provided(registry.executors)


def test_every_repository_plugin_is_in_the_catalog():
    assert catalog.distributions() | set(catalog.EXECUTORS.values()) == set(REPO_PLUGINS)
    assert not catalog.distributions() & set(catalog.EXECUTORS.values())  # executors stay out of the standard set


def test_an_unknown_executor_names_the_distribution_that_provides_it():
    result = run_cli("merge", ROOT / "examples" / "quickstart.yaml", "--executor", "ray", "--out", "unused",
                     env={"MERGEHUB_DISABLE_PLUGINS": "mergehub-executor-ray"})
    assert result.returncode == 1, result.output
    assert "unknown executor 'ray'" in result.flat, result.output
    assert "switched off" in result.flat and "mergehub-executor-ray" in result.flat, result.output


@pytest.mark.parametrize("backend", sorted(catalog.IO_FILES))
def test_io_files_are_files_the_backend_reads(registry, tmp_path, backend):
    """Each pattern alone makes the backend claim a directory, and formats_present finds that backend only."""
    for i, pattern in enumerate(catalog.IO_FILES[backend]):
        directory = tmp_path / str(i)
        directory.mkdir()
        (directory / pattern.replace("*", "model-00001-of-00002")).write_bytes(b"")
        assert registry.io_backends[backend].spec.load().detect(directory) is not None, pattern
        assert catalog.formats_present(directory) == [backend], pattern


# -- the hints, in process: nothing installed -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def empty():
    return build_registry(make_plugin_manager(entrypoints=False))


def test_an_uninstalled_method_names_its_distribution(empty):
    with pytest.raises(MergehubError) as raised:
        empty.method("ties")
    assert raised.value.message == "unknown merge method 'ties'"
    assert raised.value.hint.startswith("installed merge methods: none. ")
    assert "pip install mergehub-method-ties" in raised.value.hint and catalog.STANDARD in raised.value.hint


def test_a_method_nobody_provides_keeps_the_plain_hint(empty):
    with pytest.raises(MergehubError) as raised:
        empty.method("no_such_method")
    assert "pip install" not in raised.value.hint and "Install a plugin that provides" in raised.value.hint


def test_an_uninstalled_io_backend_names_its_distribution(empty):
    with pytest.raises(MergehubError) as raised:
        empty.io_backend("safetensors")
    assert "pip install mergehub-io-safetensors" in raised.value.hint


@pytest.mark.parametrize(("files", "distribution"), [
    (["model.safetensors", "config.json"], "mergehub-io-safetensors"),
    (["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"], "mergehub-io-pytorch"),
])
def test_weights_whose_backend_is_missing_name_it(empty, tmp_path, files, distribution):
    for name in files:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(MergehubError) as raised:
        open_reader(tmp_path, empty)
    assert raised.value.message == f"no installed IO backend can read the weights in {tmp_path}"
    assert "installed IO backends: none" in raised.value.hint and f"pip install {distribution}" in raised.value.hint


def test_a_directory_without_weights_keeps_its_message(empty, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MergehubError, match="no weights found in"):
        open_reader(tmp_path, empty)


def test_architecture_hints(empty):
    llama = empty.missing_architecture_hint(["LlamaForCausalLM"])
    assert "pip install mergehub-arch-llama" in llama and catalog.DERIVER not in llama
    other = empty.missing_architecture_hint(["Qwen3ForCausalLM"])
    assert f"pip install {catalog.DERIVER}" in other and "transformers can build" in other
    both = empty.missing_architecture_hint(["MistralForCausalLM", "Qwen3ForCausalLM"])
    assert "mergehub-arch-mistral" in both and catalog.DERIVER in both


# -- through the real CLI: plugins switched off -----------------------------------------------------------------------
def test_cli_errors_name_the_switched_off_distribution(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(EXAMPLE_MODEL, model)
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {model}\n")
    off = "MERGEHUB_DISABLE_PLUGINS"
    with ThreadPoolExecutor(3) as pool:
        method = pool.submit(run_cli, "schema", "--method", "ties", env={off: "mergehub-method-ties"})
        io = pool.submit(run_cli, "validate", recipe, env={off: "mergehub-io-safetensors"})
        nothing = pool.submit(run_cli, "plugins", env={"MERGEHUB_LOAD_PLUGINS": ""})
    for result in (method.result(), io.result()):
        assert result.returncode == 1 and "Traceback" not in result.output, result.output
    text = flat(method.result())
    assert "unknown merge method 'ties'" in text
    assert "Merge method 'ties' comes from mergehub-method-ties, which is installed but switched off" in text
    text = flat(io.result())
    assert f"no installed IO backend can read the weights in {model}" in text, text
    assert "comes from mergehub-io-safetensors, which is installed but switched off" in text

    listing = nothing.result()
    assert listing.returncode == 0, listing.output
    assert catalog.STANDARD in " ".join(listing.stderr.split()), listing.stderr
    builtin = "executor\tlocal\tmergehub\t"  # the core's own executor cannot be switched off
    assert all(line.endswith("\tdisabled") or line.startswith(builtin) for line in listing.stdout.splitlines()[1:]), listing.stdout


def test_recipes_name_the_distribution_of_a_missing_method_or_architecture(tmp_path):
    """validate on a recipe: the unknown method's hint, and the architecture warning, name what to install."""
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(f"merge_method: ties\nbase_model: {EXAMPLE_MODEL}\nmodels:\n  - model: {EXAMPLE_MODEL}\n"
                      "    parameters: {weight: 1, density: 1}\n")
    off = "MERGEHUB_DISABLE_PLUGINS"
    with ThreadPoolExecutor(2) as pool:
        method = pool.submit(run_cli, "validate", recipe, env={off: "mergehub-method-ties"})
        arch = pool.submit(run_cli, "validate", recipe, env={off: "mergehub-arch-llama,mergehub-arch-transformers"})
    result = method.result()
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    assert "comes from mergehub-method-ties, which is installed but switched off" in flat(result)
    result = arch.result()
    assert result.returncode == 0, result.output
    text = flat(result)
    assert "no installed architecture plugin knows LlamaForCausalLM" in text
    assert "mergehub-arch-llama" in text and "switched off" in text, text
