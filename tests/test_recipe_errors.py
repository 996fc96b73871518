"""Bad recipes through the real CLI: one clear message (what, file:line + key path, fix), no traceback, no output.

Model directories are referred to by their name relative to the CLI's working directory (the tiny-models root),
which keeps messages short; the recipe file itself is passed by absolute path, so locations read
``/abs/path/recipe.yml:LINE key.path``.
"""

from __future__ import annotations

import re
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from mergehub.testing import CliResult, load_state, run_cli
from mergehub.testing import flat_output as flat


# -- helpers -------------------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str, name: str = "recipe.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def line_of(cfg: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle`` (computed from the file, not by mergehub)."""
    hits = [i + 1 for i, line in enumerate(cfg.read_text().splitlines()) if needle in line]
    return hits[occurrence - 1]


def assert_clean_failure(result: CliResult, *needles: str) -> str:
    """Exit code != 0, no traceback, and every needle in the (flattened) output."""
    text = flat(result.output)
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert "mergehub: error" in result.output, result.output
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{result.output}"
    return text


def located(cfg: Path, line: int, path: str = "") -> str:
    return f"{cfg}:{line} {path}".strip()


def validate(cfg: Path, cwd: Path, env: dict[str, str] | None = None) -> CliResult:
    return run_cli("validate", cfg, cwd=cwd, env=env)


def validate_and_merge(cfg: Path, out: Path, cwd: Path) -> tuple[CliResult, CliResult]:
    """Both verbs on one recipe, run concurrently (each is a separate process)."""
    with ThreadPoolExecutor(2) as pool:
        v = pool.submit(run_cli, "validate", cfg, cwd=cwd)
        m = pool.submit(run_cli, "merge", cfg, "--out", out, cwd=cwd)
        return v.result(), m.result()


def assert_nothing_written(out: Path, recipe_dir: Path) -> None:
    """Neither the output nor any hidden partial/old directory appeared beside it."""
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in recipe_dir.glob("*.yml"))


def both_fail(cfg: Path, tmp_path: Path, cwd: Path, *needles: str) -> str:
    out = tmp_path / "merged"
    v, m = validate_and_merge(cfg, out, cwd)
    text = assert_clean_failure(v, *needles)
    assert_clean_failure(m, *needles)
    assert_nothing_written(out, tmp_path)
    return text


def models(tiny_models, *names: str) -> tuple[Path, list[str]]:
    """Standard 4-layer tiny Llamas (shared with other test files), as (cwd, relative names)."""
    seeds = {"a": 1, "b": 2, "c": 3, "d": 4}
    paths = [tiny_models(n, layers=4, seed=seeds[n]) for n in names]
    assert len({p.parent for p in paths}) == 1
    return paths[0].parent, [p.name for p in paths]


# -- recipe-level problems (no model is opened) ----------------------------------------------------------------------
def test_malformed_yaml_reports_line(tmp_path, tiny_models):
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"""
        merge_method: linear
        models:
          - model: {a}
           parameters: {{weight: 1}}
        """)
    text = both_fail(cfg, tmp_path, cwd, "not valid YAML", f"{cfg}:4")
    assert "indentation" in text


def test_unknown_top_level_key_did_you_mean(tmp_path, tiny_models):
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"""
        merge_method: linear
        models:
          - model: {a}
        paramters:
          weight: 1
        """)
    assert_clean_failure(validate(cfg, cwd), located(cfg, 4, "paramters"), "unknown key 'paramters'",
                         "did you mean 'parameters'")


def test_misspelt_parameter_did_you_mean(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        merge_method: linear
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 4]
                parameters: {{weight: 1}}
              - model: {b}
                layer_range: [0, 4]
                parameters:
                  wieght: 1
        """)
    text = assert_clean_failure(validate(cfg, cwd), located(cfg, 10, "slices[0].sources[1].parameters.wieght"),
                                "unknown parameter 'wieght'", "did you mean 'weight'")
    assert "allowed parameters here: weight, normalize" in text


def test_unknown_method_lists_installed_and_suggests(tmp_path, tiny_models):
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"""
        models:
          - model: {a}
            parameters: {{weight: 1}}
        merge_method: linaer
        """)
    text = assert_clean_failure(validate(cfg, cwd), located(cfg, 4, "merge_method"), "unknown merge method 'linaer'",
                                "did you mean 'linear'")
    installed = re.search(r"installed merge methods: ([^.]*)\.", text)
    assert installed, text
    assert {"linear", "passthrough"} <= set(installed.group(1).split(", "))


def test_several_problems_reported_at_once(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        merge_method: linear
        paramters:
          normalize: true
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 2]
                parameters: {{wieght: 1}}
              - model: {b}
                layer_range: [2, 4]
                parameters: {{weight: 1}}
          - sources:
              - model: {a}
                layer_range: [3, 2]
                parameters: {{weight: maybe}}
        dtype: bf17
        """)
    text = both_fail(cfg, tmp_path, cwd,
                     "5 problems",
                     located(cfg, 2, "paramters"),
                     located(cfg, 8, "slices[0].sources[0].parameters.wieght"),
                     located(cfg, 14, "slices[1].sources[0].layer_range"),
                     located(cfg, 15, "slices[1].sources[0].parameters.weight"),
                     located(cfg, 16, "dtype"),
                     "unknown dtype 'bf17'")
    # each problem is reported once, in line order
    positions = [text.index(located(cfg, n)) for n in (2, 8, 14, 15, 16)]
    assert positions == sorted(positions)


def test_models_and_slices_together(tmp_path, tiny_models):
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        models:
          - model: {a}
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 4]
        """)
    text = assert_clean_failure(validate(cfg, cwd), "exactly one of 'models' or 'slices'", "(it has both)")
    line = cfg.read_text().splitlines().index("slices:") + 1
    assert f"{cfg}:{line} slices" in text  # points at the second form


def test_wrong_parameter_type(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        merge_method: linear
        parameters:
          weight: 1
          normalize: maybe
        models:
          - model: {a}
          - model: {b}
        """)
    assert_clean_failure(validate(cfg, cwd), located(cfg, 4, "parameters.normalize"), "'maybe'", "expected boolean")


def test_empty_layer_range(tmp_path, tiny_models):
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"""
        merge_method: passthrough
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 2]
          - sources:
              - model: {a}
                layer_range: [3, 3]
        """)
    assert_clean_failure(validate(cfg, cwd), located(cfg, 8, "slices[1].sources[0].layer_range"),
                         "[3, 3] is empty", "start must be below end")


# -- problems found by the planner (config.json and headers only) -----------------------------------------------------
def test_slice_layer_count_rule(tmp_path, tiny_models):
    deep = tiny_models("deep8", layers=8, seed=5)
    mid = tiny_models("mid6", layers=6, seed=6)
    cwd, (a,) = models(tiny_models, "a")
    assert deep.parent == mid.parent == cwd
    cfg = write(tmp_path, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 4]
          - sources:
              - model: {deep.name}
                layer_range: [2, 8]
              - model: {mid.name}
                layer_range: [0, 5]
        """)
    text = both_fail(cfg, tmp_path, cwd, located(cfg, 7, "slices[1]"), "slices[1]", "same number of layers",
                     f"{deep.name} [2, 8] = 6 layers", f"{mid.name} [0, 5] = 5 layers",
                     "give each range its own slice")
    assert "1 problem " in text  # only this one: nothing else is wrong with the recipe


def test_models_syntax_with_different_depths(tmp_path, tiny_models):
    mid = tiny_models("mid6", layers=6, seed=6)
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        models:
          - model: {a}
          - model: {mid.name}
        """)
    assert_clean_failure(validate(cfg, cwd), located(cfg, 3, "models"), "different numbers of layers",
                         f"{a} [0, 4] = 4 layers", f"{mid.name} [0, 6] = 6 layers", "use slices:")


GUARD = '''
"""Installed by a test: any read of tensor *data* kills the process with a marker (headers stay readable)."""
import os
import sys

import safetensors

_real_open = safetensors.safe_open


def _die(what):
    sys.stderr.write(f"TENSOR-DATA-READ {what}\\n")
    sys.stderr.flush()
    os._exit(97)


class _Slice:
    def __init__(self, inner):
        self._inner = inner

    def get_dtype(self):
        return self._inner.get_dtype()

    def get_shape(self):
        return self._inner.get_shape()

    def __getitem__(self, key):
        _die("slice")


class _GuardedOpen:
    def __init__(self, *args, **kwargs):
        self._inner = _real_open(*args, **kwargs)

    def get_tensor(self, name):
        _die(name)

    def get_slice(self, name):
        return _Slice(self._inner.get_slice(name))

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


safetensors.safe_open = _GuardedOpen
'''


def test_layer_range_past_end_is_caught_before_reading_tensor_data(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    env = {"PYTHONPATH": str(guard)}
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    bad = write(recipes, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 2]
              - model: {b}
                layer_range: [2, 4]
          - sources:
              - model: {a}
                layer_range: [2, 6]
        """)
    good = write(recipes, f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {a}\n", "good.yml")
    out = recipes / "merged"
    with ThreadPoolExecutor(3) as pool:
        v = pool.submit(run_cli, "validate", bad, cwd=cwd, env=env)
        m = pool.submit(run_cli, "merge", bad, "--out", out, cwd=cwd, env=env)
        control = pool.submit(run_cli, "merge", good, "--out", tmp_path / "control", cwd=cwd, env=env)
    for result in (v.result(), m.result()):
        text = assert_clean_failure(result, located(bad, 11, "slices[1].sources[0].layer_range"),
                                    f"[2, 6] goes past the end of {a}, which has 4 layers", "at most 4")
        assert "TENSOR-DATA-READ" not in text
    assert_nothing_written(out, recipes)
    # the guard does work: a real merge under it dies at its first tensor read
    assert control.result().returncode == 97 and "TENSOR-DATA-READ" in control.result().output


def test_missing_required_weight_names_the_model_and_the_unlisted_base(tmp_path, tiny_models):
    """A source without weight, and a base_model not under models: (appended as a source without parameters)."""
    cwd, (a, b, d) = models(tiny_models, "a", "b", "d")
    cfg = write(tmp_path, f"""
        merge_method: linear
        base_model: {d}
        models:
          - model: {a}
            parameters: {{weight: 1}}
          - model: {b}
        """)
    text = assert_clean_failure(validate(cfg, cwd), "2 problems",
                                located(cfg, 6, "models[1]"), f"missing required parameter 'weight' for {b}",
                                located(cfg, 2, "base_model"), f"missing required parameter 'weight' for {d}")
    assert f"for {a}" not in text


def test_passthrough_with_two_sources(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        merge_method: passthrough
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 2]
          - sources:
              - model: {a}
                layer_range: [2, 4]
              - model: {b}
                layer_range: [2, 4]
        """)
    assert_clean_failure(validate(cfg, cwd), located(cfg, 6, "slices[1]"), "'passthrough'", "exactly 1 inputs",
                         "this has 2")


def test_missing_model_directory(tmp_path, tiny_models):
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        models:
          - model: {a}
          - model: ./no-such-model
        """)
    both_fail(cfg, tmp_path, cwd, located(cfg, 5, "models[1].model"), "model directory not found: ./no-such-model")


def test_typos_and_bad_models_come_in_one_report(tmp_path, tiny_models):
    """Two typos, a missing directory and a damaged weight file: all four at once, in line order."""
    cwd, (a,) = models(tiny_models, "a")
    damaged = tmp_path / "inputs" / "damaged"
    damaged.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    (damaged / "config.json").write_text((cwd / a / "config.json").read_text())
    (damaged / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cfg = write(work, f"""
        merge_method: linear
        dtyp: float32
        models:
          - model: {a}
            parameters: {{wieght: 1}}
          - model: ./no-such-model
            parameters: {{weight: 1}}
          - model: {damaged}
            parameters: {{weight: 1}}
        """)
    text = both_fail(cfg, work, cwd, "4 problems", located(cfg, 2, "dtyp"),
                     located(cfg, 5, "models[0].parameters.wieght"), located(cfg, 6, "models[1].model"),
                     "model directory not found: ./no-such-model", located(cfg, 8, "models[2].model"),
                     "model.safetensors")
    positions = [text.index(located(cfg, n)) for n in (2, 5, 6, 8)]
    assert positions == sorted(positions)


def test_every_stage_reports_typos_and_missing_models_together(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        name: first
        merge_method: linear
        models:
          - model: {a}
            parameters: {{wieght: 1}}
          - model: ./gone
            parameters: {{weight: 1}}
        ---
        merge_method: linear
        models:
          - model: first
            parameters: {{weight: 1}}
          - model: {b}
            parameters: {{weight: 1}}
          - model: ./also-gone
            parameters: {{weigth: 1}}
        """)
    assert_clean_failure(validate(cfg, cwd), "4 problems", "unknown parameter 'wieght'",
                         "model directory not found: ./gone", "model directory not found: ./also-gone",
                         "unknown parameter 'weigth'")


# -- the output directory and --debug ------------------------------------------------------------------------------
def test_existing_output_refused_then_replaced_with_force(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        merge_method: linear
        models:
          - model: {a}
            parameters: {{weight: 1}}
          - model: {b}
            parameters: {{weight: 3}}
        """)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    refused = run_cli("merge", cfg, "--out", out, cwd=cwd)
    assert_clean_failure(refused, f"{out} already exists", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"

    forced = run_cli("merge", cfg, "--out", out, "--force", cwd=cwd)
    assert forced.returncode == 0, forced.output
    names = sorted(p.name for p in out.iterdir())
    assert "keep.txt" not in names and {"config.json", "model.safetensors"} <= set(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.yml"]  # no hidden old/partial dirs
    merged, sa, sb = load_state(out), load_state(cwd / a), load_state(cwd / b)
    for name in ("model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight"):
        torch.testing.assert_close(merged[name], (sa[name] + 3 * sb[name]) / 4, rtol=0, atol=1e-6)


def test_debug_shows_a_traceback(tmp_path, tiny_models):
    cwd, (a,) = models(tiny_models, "a")
    cfg = write(tmp_path, f"merge_method: linaer\nmodels:\n  - model: {a}\n")
    with ThreadPoolExecutor(3) as pool:
        plain = pool.submit(run_cli, "validate", cfg, cwd=cwd)
        before = pool.submit(run_cli, "--debug", "validate", cfg, cwd=cwd)
        after = pool.submit(run_cli, "validate", cfg, "--debug", cwd=cwd)
    assert_clean_failure(plain.result(), "unknown merge method 'linaer'")
    for result in (before.result(), after.result()):
        assert result.returncode != 0
        assert "Traceback (most recent call last)" in result.output, result.output
        assert "RecipeError" in result.output


def test_problems_from_different_planning_stages_come_together(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        merge_method: linear
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 9]
                parameters: {{weight: 1}}
          - sources:
              - model: {b}
                layer_range: [0, 2]
        """)
    text = assert_clean_failure(validate(cfg, cwd), "goes past the end", "missing required parameter 'weight'")
    assert text.index("goes past the end") < text.index("missing required parameter")  # ordered by line


def test_shared_parameter_on_a_model_is_a_warning(tmp_path, tiny_models):
    cwd, (a, b) = models(tiny_models, "a", "b")
    cfg = write(tmp_path, f"""
        merge_method: linear
        models:
          - model: {a}
            parameters: {{weight: 1, normalize: false}}
          - model: {b}
            parameters: {{weight: 1}}
        """)
    result = validate(cfg, cwd)
    assert result.returncode == 0, result.output
    assert "warning" in result.output and "'normalize' is shared" in result.output and f"{cfg}:4" in result.output
