"""The distributions as users get them: one version everywhere, and built wheels that work installed non-editable.

The version lives in the file VERSION at the repository's root; the core's pyproject.toml reads it, and each
plugin folder holds a symbolic link VERSION to it, which its pyproject.toml reads (setuptools accepts only files
inside the project's folder, and checks the link's own path, not its target).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mergehub
import tomllib
from mergehub.plugin import catalog

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "VERSION").read_text(encoding="utf-8").strip()
PLUGINS = sorted(p.parent for p in ROOT.glob("plugins/*/*/pyproject.toml"))
#: The standard set: every plugin but the executors (each brings an engine of its own, such as Ray).
STANDARD = [d for d in PLUGINS if d.parent.name != "executors"]
EXAMPLES = sorted(p.parent for p in ROOT.glob("examples/plugins/*/pyproject.toml"))
#: Not copied for the build: VCS data, caches, build output, editable-install metadata, earlier merges.
IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "*.egg-info", "merged",
                                ".*.mergehub-partial")
#: The recipe whose output is loaded with transformers in the new virtualenv.
FORWARD = """
import importlib
import sys
from importlib import metadata
from pathlib import Path

import torch
import transformers

site = Path(sys.argv[2]).resolve()
for entry_point in metadata.entry_points(group="mergehub"):  # every plugin is the installed copy, not the checkout
    module = importlib.import_module(entry_point.value.split(":")[0])
    assert site in Path(module.__file__).resolve().parents, (entry_point.name, module.__file__)
import mergehub
assert site in Path(mergehub.__file__).resolve().parents, mergehub.__file__

model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
logits = model(torch.tensor([[1, 5, 7, 9]])).logits
assert logits.shape == (1, 4, model.config.vocab_size), logits.shape
assert torch.isfinite(logits).all()
print("forward ok", type(model).__name__)
"""


def project(directory: Path) -> dict:
    return tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def dist_name(directory: Path) -> str:
    return project(directory)["name"]


def core_requirement(directory: Path) -> str:
    (requirement,) = [r for r in project(directory)["dependencies"] if re.match(r"mergehub\b(?![-_])", r)]
    return requirement.replace(" ", "")


# -- one version -----------------------------------------------------------------------------------------------------
def test_the_core_reads_the_one_version_file():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"file": "VERSION"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION
    assert mergehub.__version__ == VERSION, "core/mergehub/__init__.py's __version__ differs from VERSION"


def test_every_plugin_reads_the_one_version_file_and_needs_this_core():
    major_minor = ".".join(VERSION.split(".")[:2])
    for directory in PLUGINS:
        pyproject = tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))
        where = directory.relative_to(ROOT)
        assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"], where
        assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"file": "VERSION"}, where
        link = directory / "VERSION"
        assert link.is_symlink() and link.resolve() == (ROOT / "VERSION").resolve(), f"{where}/VERSION must link to it"
        assert not os.path.isabs(os.readlink(link)), f"{where}/VERSION must be a relative link"
        # a compatible range: this version or a later patch release of it
        assert core_requirement(directory) == f"mergehub~={VERSION}", (where, major_minor)


def test_the_standard_extra_pins_every_plugin_at_the_version():
    extras = project(ROOT)["optional-dependencies"]
    assert sorted(extras["standard"]) == sorted(f"{dist_name(d)}=={VERSION}" for d in STANDARD)
    assert catalog.distributions() == {dist_name(d) for d in STANDARD}


def test_the_example_plugins_accept_this_core():
    """The examples stand for third-party plugins: their own versions, and a range that admits this core."""
    from packaging.specifiers import SpecifierSet

    for directory in EXAMPLES:
        requirement = core_requirement(directory)
        assert VERSION in SpecifierSet(requirement.removeprefix("mergehub")), (directory.name, requirement)


# -- built wheels, installed as a user installs them --------------------------------------------------------------
def run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, command))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a shell in which only ``venv`` is activated: nothing of the checkout leaks in."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"} and not k.startswith("MERGEHUB_")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *filter(None, [os.environ.get("PATH")])])
    env["VIRTUAL_ENV"] = str(venv)
    return env | {"COLUMNS": "200", "NO_COLOR": "1", "PIP_NO_INPUT": "1"}


def test_built_wheels_install_and_merge_every_example(tmp_path):
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    # 1. wheels of the core and of every plugin, built from a copy of the checkout (the checkout stays clean)
    src, house = tmp_path / "src", tmp_path / "wheelhouse"
    shutil.copytree(ROOT, src, symlinks=True, ignore=IGNORE)
    folders = [src, *(src / d.relative_to(ROOT) for d in PLUGINS + EXAMPLES)]
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", house, *folders)
    wheel = lambda d: f"{d.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    examples = {dist_name(d): project(d)["version"] for d in EXAMPLES}
    expected = {wheel("mergehub"), *(wheel(dist_name(d)) for d in PLUGINS),
                *(f"{d.replace('-', '_')}-{v}-py3-none-any.whl" for d, v in examples.items())}
    assert {p.name for p in house.iterdir()} == expected
    lap("build wheels")

    # 2. a fresh virtualenv with the core alone: it says how to get the plugins
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    env = clean_env(venv)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", "--find-links", house]
    run(*pip, "torch==2.13.0", f"mergehub=={VERSION}", env=env)  # pinned: the wheelhouse's, never another
    lap("install core")
    cli = venv / "bin" / "mergehub"
    bare = subprocess.run([cli, "plugins"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert bare.returncode == 0, bare.stderr
    assert catalog.STANDARD in " ".join(bare.stderr.split()), bare.stderr
    missing = subprocess.run([cli, "schema", "--method", "ties"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300, check=False)
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", missing.stderr).split())
    assert missing.returncode == 1 and "unknown merge method 'ties'" in text, missing.stderr
    assert "pip install mergehub-method-ties" in text and catalog.STANDARD in text, missing.stderr
    lap("core-only checks")

    # 3. the standard set (and the two example plugins), from the wheelhouse
    run(*pip, f"mergehub[standard]=={VERSION}", *examples, env=env)
    lap("install standard")
    listing = json.loads(run(cli, "plugins", "--json", env=env, cwd=tmp_path).stdout)
    repo = {dist_name(d) for d in STANDARD + EXAMPLES}
    assert {(r["kind"], r["name"], r["distribution"]) for r in listing if r["distribution"] == "mergehub"} == {
        ("executor", "local", "mergehub")}, listing  # the core's built-in executor
    listing = [r for r in listing if r["distribution"] != "mergehub"]
    assert {r["distribution"] for r in listing} == repo, listing
    assert all(r["status"] == "ok" for r in listing), listing
    versions = {r["distribution"]: r["version"] for r in listing}
    assert versions == {d: examples.get(d, VERSION) for d in repo}
    assert {r["name"] for r in listing if r["kind"] == "method"} >= set(catalog.METHODS)

    # 4. every example recipe, run where a user runs it (paths in the recipes are relative to the checkout)
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples", ignore=IGNORE)
    recipes = sorted((work / "examples").glob("*.yaml"))
    assert len(recipes) >= 4
    for recipe in recipes:
        out = work / "merged" / recipe.stem
        run(cli, "merge", recipe.relative_to(work), "--out", out.relative_to(work), env=env, cwd=work)
        assert (out / "config.json").is_file() and list(out.glob("*.safetensors")), recipe.name
    lap("merge examples")

    # 5. transformers in that virtualenv loads a merged model and runs it
    site = run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", env=env).stdout
    result = run(venv / "bin" / "python", "-c", FORWARD, work / "merged" / "quickstart", site.strip(), env=env, cwd=work)
    assert "forward ok" in result.stdout
    lap("forward pass")
    print("timings (s):", timings, "total", round(sum(timings.values()), 1))
