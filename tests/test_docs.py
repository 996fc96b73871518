"""CONTRIBUTING.md shows the real files and documents every hook, field, key, switch and fixture.

Convention: a line ``<!-- file: PATH -->`` (PATH relative to the repository root) directly before a fenced code
block says the block is that file's exact content. Blocks that contain triple backticks themselves (READMEs) use
a longer fence, as CommonMark allows.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from mergehub import testing
from mergehub.plugin import discovery as plugins
from mergehub.plugin import hookspecs
from mergehub.plugin.registry import core_schema
from mergehub.plugin.specs import MergeInputs

ROOT = Path(__file__).resolve().parents[1]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
FILE_MARKER = re.compile(r"<!-- file: (?P<path>\S+) -->")
FENCE = re.compile(r"(?P<fence>`{3,}|~{3,})[^`]*")
#: Plugins the walk-throughs present in full: every file of theirs must appear in CONTRIBUTING.md.
WALKTHROUGHS = ["examples/plugins/mergehub-method-median", "examples/plugins/mergehub-arch-qwen2"]
GENERATED = {"__pycache__", ".pytest_cache", "build", "dist"}


def file_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(path, line, content)`` for every fenced block that follows a file marker."""
    lines = text.split("\n")
    blocks = []
    for i, line in enumerate(lines):
        marker = FILE_MARKER.fullmatch(line)
        if marker is None:
            continue
        opening = FENCE.fullmatch(lines[i + 1]) if i + 1 < len(lines) else None
        if opening is None:
            raise AssertionError(f"CONTRIBUTING.md:{i + 1}: a file marker must be directly followed by a code fence")
        fence = opening["fence"]
        closing = re.compile(re.escape(fence[0]) + "{%d,}\\s*" % len(fence))
        end = next((j for j in range(i + 2, len(lines)) if closing.fullmatch(lines[j])), None)
        if end is None:
            raise AssertionError(f"CONTRIBUTING.md:{i + 2}: the code fence opened here is never closed")
        blocks.append((marker["path"], i + 1, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


TEXT = CONTRIBUTING.read_text(encoding="utf-8")
BLOCKS = file_blocks(TEXT)


def test_contributing_shows_files() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("path", "line", "content"), BLOCKS, ids=[f"{p}:{n}" for p, n, _ in BLOCKS])
def test_code_block_is_the_real_file(path: str, line: int, content: str) -> None:
    file = ROOT / path
    assert file.is_file(), f"CONTRIBUTING.md:{line} shows {path}, which does not exist"
    assert content == file.read_text(encoding="utf-8"), (
        f"CONTRIBUTING.md:{line} no longer matches {path}: paste the file's current content into the block")


@pytest.mark.parametrize("plugin", WALKTHROUGHS)
def test_walkthrough_shows_every_file_of_its_plugin(plugin: str) -> None:
    shown = {path for path, _, _ in BLOCKS}
    files = [f for f in (ROOT / plugin).rglob("*") if f.is_file() and f.stat().st_size > 0  # py.typed is empty
             and not GENERATED & set(f.parts) and not any(p.endswith(".egg-info") for p in f.parts)]
    missing = sorted(str(f.relative_to(ROOT)) for f in files if str(f.relative_to(ROOT)) not in shown)
    assert files and not missing, f"CONTRIBUTING.md does not show: {missing}"


def hook_signature(function: object) -> str:
    """``def name(args) -> return:`` as written in hookspecs.py (annotations are strings there)."""
    signature = inspect.signature(function)  # type: ignore[arg-type]
    params = ", ".join(p.name + (f": {p.annotation}" if p.annotation is not p.empty else "")
                       for p in signature.parameters.values())
    return f"def {function.__name__}({params}) -> {signature.return_annotation}:"  # type: ignore[attr-defined]


HOOKS = [f for name, f in vars(hookspecs).items() if name.startswith("mergehub_") and callable(f)]


def test_there_are_hooks_to_document() -> None:
    assert len(HOOKS) >= 3


@pytest.mark.parametrize("hook", HOOKS, ids=lambda f: f.__name__)
def test_every_hook_is_documented_with_its_exact_signature(hook: object) -> None:
    assert hook_signature(hook) in TEXT


def has_row(key: str) -> bool:
    """Whether a table of CONTRIBUTING.md has a row for ``key``."""
    return re.search(rf"^ *\| `{re.escape(key)}` \|", TEXT, re.M) is not None


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(MergeInputs)])
def test_every_merge_inputs_field_is_documented(field: str) -> None:
    assert has_row(field), f"the MergeInputs table has no row for {field}"


def method_schema_keys() -> list[str]:
    schema = core_schema("method")
    contract = list(schema["properties"]["x-mergehub"]["properties"])
    scopes = schema["properties"]["properties"]["additionalProperties"]["properties"]["x-scope"]["enum"]
    return contract + scopes


@pytest.mark.parametrize("key", method_schema_keys())
def test_every_method_contract_key_and_scope_is_documented(key: str) -> None:
    assert has_row(key), f"the method schema tables have no row for {key}"


def architecture_keys() -> list[str]:
    schema = core_schema("architecture")
    return list(schema["properties"]) + list(schema["$defs"]["weight"]["properties"])


@pytest.mark.parametrize("key", architecture_keys())
def test_every_architecture_definition_key_is_documented(key: str) -> None:
    assert has_row(key), f"the architecture key tables have no row for {key}"


@pytest.mark.parametrize("variable", sorted(set(re.findall(r"MERGEHUB_[A-Z_]+", inspect.getsource(plugins)))))
def test_every_plugin_switch_is_documented(variable: str) -> None:
    assert has_row(variable), f"the switches table has no row for {variable}"


def public_testing_names() -> list[str]:
    """Public functions, fixtures and classes of mergehub.testing (constants are documented in prose)."""
    return [name for name in testing.__all__ if not name.isupper()]


@pytest.mark.parametrize("name", public_testing_names())
def test_every_testing_helper_is_documented(name: str) -> None:
    assert has_row(name), f"the test fixtures table has no row for {name}"
