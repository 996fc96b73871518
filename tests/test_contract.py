"""Every method and architecture plugin of this repository, as installed, keeps the plugin contract.

The checks are mergehub's plugin test kit (:mod:`mergehub.testkit.contract`), exactly what a third-party plugin's
own tests run; each plugin's ``tests/test_installed.py`` runs it on itself too. The distributions come from
the installed entry points, never from a hand-kept list.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mergehub.plugin.registry import build_registry
from mergehub.testing import (
    check_architecture_distribution,
    check_method_distribution,
    plugin_distributions,
)

ROOT = Path(__file__).resolve().parents[1]
METHODS = plugin_distributions("method", under=ROOT)
ARCHITECTURES = plugin_distributions("architecture", under=ROOT)
FOLDERS = [p.parent for pattern in ("plugins/methods/*/pyproject.toml", "plugins/architectures/*/pyproject.toml",
                                    "examples/plugins/*/pyproject.toml") for p in sorted(ROOT.glob(pattern))]


def test_at_least_the_builtin_methods_are_registered():
    registry = build_registry()
    assert {"linear", "passthrough"} <= set(registry.methods)
    assert not registry.failures() and not registry.conflicts


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_plugin_folder_is_installed_checked_and_runs_the_kit_itself(folder: Path):
    name = re.search(r'^name = "([^"]+)"', (folder / "pyproject.toml").read_text(), re.MULTILINE)
    assert name is not None, f"{folder / 'pyproject.toml'} has no name"
    name = name[1]
    assert name in METHODS + ARCHITECTURES, f"{name} is not installed: pip install -e {folder.relative_to(ROOT)}"
    installed = folder / "tests" / "test_installed.py"
    assert installed.is_file() and f'_distribution("{name}")' in installed.read_text(), (
        f"{installed.relative_to(ROOT)} must call the plugin test kit on {name}")


@pytest.mark.parametrize("distribution", METHODS)
def test_method_distribution_keeps_the_contract(distribution):
    check_method_distribution(distribution)


@pytest.mark.parametrize("distribution", ARCHITECTURES)
def test_architecture_distribution_keeps_the_contract(distribution):
    check_architecture_distribution(distribution)
