"""``mergehub new`` writes plugin distributions that install, register and pass their own tests unchanged.

Each scaffold is installed with ``pip install --no-deps --no-build-isolation --target`` (a real wheel build,
no network, nothing added to the dev virtualenv) and found through PYTHONPATH, as an installed plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mergehub.testing import run_cli


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Both kinds scaffolded by the CLI into one folder and installed into a target directory."""
    root = tmp_path_factory.mktemp("new")
    for kind, name in (("method", "my_mean"), ("architecture", "my_family")):
        result = run_cli("new", kind, name, "--dir", root)
        assert result.returncode == 0, result.output
    site = root / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    folders = [str(root / "mergehub-method-my-mean"), str(root / "mergehub-arch-my-family")]
    subprocess.run([*pip, "--target", str(site), *folders], check=True, capture_output=True, timeout=300)
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return root, {"PYTHONPATH": path}


def test_new_method_writes_the_distribution(installed: tuple[Path, dict[str, str]]) -> None:
    root, _ = installed
    folder = root / "mergehub-method-my-mean"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                   and not {"build", "__pycache__"} & set(p.parts) and ".egg-info" not in str(p))
    assert files == ["README.md", "pyproject.toml", "src/mergehub_method_my_mean/__init__.py",
                     "src/mergehub_method_my_mean/method.py", "src/mergehub_method_my_mean/parameters.schema.json",
                     "src/mergehub_method_my_mean/py.typed", "tests/test_installed.py", "tests/test_my_mean.py"]
    schema = json.loads((folder / "src/mergehub_method_my_mean/parameters.schema.json").read_text())
    assert schema["x-mergehub"]["name"] == "my_mean" and "title" not in schema
    assert schema["x-mergehub"]["blocks"] == "elementwise"
    assert 'mergehub-method-my-mean = "mergehub_method_my_mean"' in (folder / "pyproject.toml").read_text()


@pytest.mark.parametrize("folder", ["mergehub-method-my-mean", "mergehub-arch-my-family"])
def test_scaffolded_tests_pass_unchanged(installed: tuple[Path, dict[str, str]], folder: str) -> None:
    root, env = installed
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root / folder,
                          check=False, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


def test_scaffolded_plugins_are_registered(installed: tuple[Path, dict[str, str]]) -> None:
    _, env = installed
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    assert rows["method", "my_mean"]["distribution"] == "mergehub-method-my-mean"
    assert rows["architecture", "my_family"]["distribution"] == "mergehub-arch-my-family"
    assert all(r["status"] == "ok" for r in rows.values())


def test_new_refuses_an_existing_folder_and_a_bad_name(tmp_path: Path) -> None:
    from mergehub.cli.new import scaffold

    (tmp_path / "mergehub-method-taken").mkdir()
    result = run_cli("new", "method", "taken", "--dir", tmp_path)
    assert result.returncode == 1
    assert "already exists; mergehub new never overwrites" in result.flat
    assert not any((tmp_path / "mergehub-method-taken").iterdir())
    for bad in ("Median", "my-merge", "2x", "my merge"):
        with pytest.raises(Exception, match="lowercase identifier|not a valid"):
            scaffold("method", bad, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mergehub-method-taken"]
