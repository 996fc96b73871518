"""A progress bar on a terminal; nothing but the summary when piped."""

from __future__ import annotations

import os
import subprocess
import sys


def recipe(tmp_path, model):
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"merge_method: passthrough\nmodels:\n  - model: {model}\n")
    return cfg


def test_progress_bar_on_a_terminal(tmp_path, tiny_models):
    cfg = recipe(tmp_path, tiny_models("a", layers=2, seed=1))
    leader, follower = os.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run([sys.executable, "-m", "mergehub", "merge", str(cfg), "--out", str(tmp_path / "out")],
                          stdout=follower, stderr=follower, env=env, timeout=300)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "tensors" in text and "kB" in text and "/s" in text  # count, bytes and speed columns
    assert "21/21 tensors" in text and "21 tensors (" in text


def test_quiet_when_piped(tmp_path, tiny_models):
    cfg = recipe(tmp_path, tiny_models("a", layers=2, seed=1))
    proc = subprocess.run([sys.executable, "-m", "mergehub", "merge", str(cfg), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr.strip().startswith("merged 21 tensors") and "\r" not in proc.stderr
