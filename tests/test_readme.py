"""The README's set-up commands are what CI runs, and the CLI help matches the README."""

from __future__ import annotations

import re
from pathlib import Path

from mergehub.testing import run_cli

ROOT = Path(__file__).parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("## Using it", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quick, re.S)]


def test_readme_has_two_commands_and_ci_runs_them_exactly():
    commands = readme_commands()
    assert len(commands) == 2, commands
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    for command in commands:
        assert command in ci_lines, f"{command!r} is not a line of .ci/run"


def test_every_verb_has_help_and_the_readme_mentions_it():
    text = (ROOT / "README.md").read_text()
    from mergehub.cli.main import VERBS  # every verb the CLI has, not a hand-kept list

    for verb in VERBS:
        result = run_cli(verb, "--help")
        assert result.returncode == 0 and "usage: mergehub " + verb in result.stdout
        assert f"mergehub {verb}" in text
    merge_help = run_cli("merge", "--help").stdout
    for option in ("--out", "--force", "--shard-size", "--seed", "--device", "--intermediate-dir", "--no-reuse"):
        assert option in merge_help and option in text


def test_schema_for_a_method_lists_its_parameters():
    result = run_cli("schema", "--method", "linear")
    assert result.returncode == 0
    assert "weight" in result.stdout and "normalize" in result.stdout and "per model" in result.stdout
    unknown = run_cli("schema", "--method", "linaer")
    assert unknown.returncode == 1 and "did you mean 'linear'" in unknown.output
