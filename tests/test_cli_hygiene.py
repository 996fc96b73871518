"""The CLI as a Unix citizen: a closed pipe is no traceback, and the exit statuses are documented where users look."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mergehub.cli.main import EXIT_STATUS, VERBS

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def run_into_closed_pipe(*args: str, stream: str = "stdout") -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``stream`` connected to a pipe whose reader has already gone: every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = {stream: write_end}
        other = "stderr" if stream == "stdout" else "stdout"
        return subprocess.run([sys.executable, "-m", "mergehub", *args], text=True, cwd=ROOT,
                              **closed, **{other: subprocess.PIPE}, timeout=120)  # type: ignore[call-overload]
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [
    ("schema",), ("plugins", "--json"), ("plugins",), ("schema", "--method", "ties"),
    ("plan", str(QUICKSTART), "--json"), ("plan", str(QUICKSTART)),
], ids=lambda a: " ".join(a[:2]))
def test_output_into_a_closed_pipe_ends_quietly(args):
    result = run_into_closed_pipe(*args)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


def test_an_error_reported_into_a_closed_pipe_ends_quietly(tmp_path):
    result = run_into_closed_pipe("validate", str(tmp_path / "missing.yaml"), stream="stderr")
    assert result.returncode == 141
    assert "Traceback" not in result.stdout


def test_every_help_ends_with_the_exit_statuses():
    for argv in [["--help"]] + [[verb, "--help"] for verb in VERBS]:
        result = subprocess.run([sys.executable, "-m", "mergehub", *argv], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip().endswith(EXIT_STATUS.splitlines()[-1].strip()), argv
        assert "exit status:" in result.stdout


def test_readme_documents_the_same_exit_statuses():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(\d+)` \|", readme, re.M))
    helped = set(re.findall(r"^\s+(\d+)\s", EXIT_STATUS, re.M))
    assert documented == helped == {"0", "1", "2", "130", "141"}


def test_a_usage_error_exits_2_and_a_recipe_error_exits_1(tmp_path):
    usage = subprocess.run([sys.executable, "-m", "mergehub", "merge", "--no-such-option"], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: linear\nmodels: []\n")
    recipe = subprocess.run([sys.executable, "-m", "mergehub", "validate", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert recipe.returncode == 1 and "Traceback" not in recipe.stderr
