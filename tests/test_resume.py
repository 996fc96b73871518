"""Interrupted merges keep their finished tensors and resume to the bytes of an uninterrupted run.

Each trial starts the real CLI, waits until its journal records a chosen number of finished
tensors, stops it (SIGKILL at random points, SIGINT, SIGTERM), checks that nothing that looks
like a model appeared, resumes with ``--resume`` and compares every output file byte for byte
with a run that was never interrupted. Also: a changed recipe or input refuses to resume, a
second run on the same output is locked out, a full disk (a file-size limit) keeps the work.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mergehub.testing import flat_output, run_cli

OPTIONS = ["--max-memory", "32KiB", "--shard-size", "2MB", "--seed", "7"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    """The recipe and its uninterrupted output, made once; tests must leave the recipe as they found it."""
    tmp_path = tmp_path_factory.mktemp("resume")
    base, a, b = (tiny_models(f"r{i}", layers=6, hidden=256, vocab=4096, seed=i) for i in range(3))
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"merge_method: dare_ties\nbase_model: {base}\nparameters: {{density: 0.5, weight: 0.5}}\n"
                   f"models:\n  - model: {a}\n  - model: {b}\n")
    reference = tmp_path / "ref" / "out"
    result = run_cli("merge", cfg, "--out", reference, *OPTIONS)
    assert result.returncode == 0, result.output
    return cfg, reference, (base, a, b)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def partial(out: Path) -> Path:
    return out.parent / f".{out.name}.mergehub-partial"


def start(cfg: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "mergehub", "merge", str(cfg), "--out", str(out), *OPTIONS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def done_count(out: Path) -> int:
    try:
        return json.loads((partial(out) / "mergehub_resume.json").read_text())["done"]
    except (OSError, ValueError, KeyError):
        return 0


def stop_after(proc: subprocess.Popen, out: Path, tensors: int, sig: int, extra_delay: float = 0.0) -> tuple[int, str]:
    """Send ``sig`` once the journal says ``tensors`` are finished (plus a delay: mid-tensor)."""
    deadline = time.monotonic() + 120
    while done_count(out) < tensors:
        assert proc.poll() is None, "the merge finished before it could be interrupted: " + proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(extra_delay)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def assert_nothing_looks_finished(out: Path) -> None:
    assert not out.exists()
    assert partial(out).is_dir() and not (partial(out) / "config.json").exists()


def resume_and_compare(cfg: Path, out: Path, reference: Path) -> None:
    result = run_cli("merge", cfg, "--out", out, *OPTIONS, "--resume")
    assert result.returncode == 0, result.output
    assert files(out) == files(reference)
    assert not partial(out).exists()


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_at_random_points_then_resume_is_byte_equal(tmp_path, setup, trial):
    cfg, reference, _ = setup
    rng = random.Random(trial)
    out = tmp_path / f"kill{trial}" / "out"
    code, _ = stop_after(start(cfg, out), out, rng.randint(1, 50), signal.SIGKILL, rng.uniform(0, 0.05))
    assert code == -signal.SIGKILL
    assert_nothing_looks_finished(out)
    resume_and_compare(cfg, out, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_cleanly_and_say_how_to_resume(tmp_path, setup, sig):
    cfg, reference, _ = setup
    out = tmp_path / "run" / "out"
    code, stderr = stop_after(start(cfg, out), out, 20, sig)
    assert code == 130 and "Traceback" not in stderr, stderr
    assert "tensors are saved in" in stderr and "--resume" in stderr
    assert_nothing_looks_finished(out)
    again = run_cli("merge", cfg, "--out", out, *OPTIONS)  # neither --resume nor --force: the work is not thrown away
    assert again.returncode == 1 and "interrupted merge" in again.output and "--resume" in again.output
    resume_and_compare(cfg, out, reference)


def test_changed_recipe_or_inputs_refuse_to_resume_and_force_starts_over(tmp_path, setup):
    shared, reference, (_, a, _) = setup
    cfg = tmp_path / "r.yaml"  # a copy: this test edits it
    cfg.write_text(shared.read_text())
    out = tmp_path / "run" / "out"
    stop_after(start(cfg, out), out, 10, signal.SIGKILL)
    original = cfg.read_text()
    cfg.write_text(original.replace("density: 0.5", "density: 0.6"))
    changed = run_cli("merge", cfg, "--out", out, *OPTIONS, "--resume")
    assert changed.returncode == 1 and "Traceback" not in changed.output
    assert "the recipe changed" in changed.flat
    cfg.write_text(original)
    seed = run_cli("merge", cfg, "--out", out, *OPTIONS[:-1], "8", "--resume")
    assert seed.returncode == 1 and "--seed changed (was 7, now 8)" in seed.flat
    config = a / "config.json"
    stat = config.stat()
    try:
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        touched = run_cli("merge", cfg, "--out", out, *OPTIONS, "--resume")
        text = touched.flat
        assert touched.returncode == 1 and f"the files of model {a} changed" in text
    finally:
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    restarted = run_cli("merge", cfg, "--out", out, *OPTIONS, "--force")
    assert restarted.returncode == 0, restarted.output
    assert files(out) == files(reference)


def test_resume_without_an_interrupted_run_merges_from_the_start(tmp_path, setup):
    cfg, reference, _ = setup
    out = tmp_path / "fresh" / "out"
    resume_and_compare(cfg, out, reference)


def test_a_second_run_on_the_same_output_is_locked_out(tmp_path, setup):
    cfg, reference, _ = setup
    out = tmp_path / "run" / "out"
    first = start(cfg, out)
    while done_count(out) < 2:
        assert first.poll() is None
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # paused, still holding the lock: no race with the second run
    try:
        second = run_cli("merge", cfg, "--out", out, *OPTIONS, "--force")
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and "Traceback" not in second.output
    assert f"another mergehub run (process {first.pid}) is writing" in second.flat
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert files(out) == files(reference)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (5 * 1024**2, resource.RLIM_INFINITY))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as on a full disk


def test_full_disk_is_a_clear_error_that_keeps_the_work(tmp_path, setup):
    cfg, _, _ = setup
    one_shard = ["--shard-size", "50MB"]  # a single 22.6 MB shard, cut off at the 5 MB limit
    reference = tmp_path / "ref1" / "out"
    assert run_cli("merge", cfg, "--out", reference, *OPTIONS, *one_shard).returncode == 0
    out = tmp_path / "run" / "out"
    proc = start(cfg, out, *one_shard, preexec_fn=_limit_file_size)
    _, stderr = proc.communicate(timeout=300)
    text = flat_output(stderr)
    assert proc.returncode == 1 and "Traceback" not in stderr
    assert "no space left for the output" in text and "--resume" in text and "tensors are kept in" in text
    assert_nothing_looks_finished(out)
    assert done_count(out) > 0
    result = run_cli("merge", cfg, "--out", out, *OPTIONS, *one_shard, "--resume")
    assert result.returncode == 0, result.output
    assert files(out) == files(reference)


def test_multi_stage_recipe_resumes_the_interrupted_stage(tmp_path, setup):
    _, _, (base, a, b) = setup
    cfg = tmp_path / "mega.yaml"
    cfg.write_text(f"name: mid\nmerge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {a}\n  - model: {b}\n"
                   f"---\nmerge_method: ties\nbase_model: {base}\nparameters: {{density: 0.5, weight: 0.5}}\n"
                   f"models:\n  - model: mid\n  - model: {a}\n")
    reference = tmp_path / "ref" / "out"
    assert run_cli("merge", cfg, "--out", reference, *OPTIONS).returncode == 0
    out = tmp_path / "run" / "out"
    code, stderr = stop_after(start(cfg, out), out, 15, signal.SIGINT)  # the final stage's journal: mid is done
    assert code == 130 and "--resume" in stderr
    result = run_cli("merge", cfg, "--out", out, *OPTIONS, "--resume")
    assert result.returncode == 0, result.output
    assert "stage mid: reused" in result.flat
    weights = lambda d: {k: v for k, v in files(d).items() if k.endswith((".safetensors", ".json")) and "stage" not in k}
    assert weights(out) == weights(reference) and len(weights(out)) > 3  # the card and stamp name the stage paths
