"""Every bad input is one clear error: through the real CLI, both ``validate`` and ``merge``.

Each test asserts: exit code != 0, no traceback, the message names the culprit (recipe file and line with
the key path, or the model, file and tensor) and says how to fix it ("fix:"), and no output directory
appears, nor anything named like it beside it (no hidden partial directory either).

``validate`` runs every case. ``merge`` reads and plans a recipe exactly as ``validate`` does before it
creates anything, and each run imports torch (about a second), so it runs every case that is a test of its
own and one case of each parametrised recipe group (``MERGE_TOO``). The damaged models (4 and 5) are all
listed in one recipe that each verb runs once: each model's problem is reported at its own line.

Cases, and where each lives (issue 7, "bad inputs, each one clear error"):

1. malformed YAML: bad indentation -> test_recipe_errors.test_malformed_yaml_reports_line; a tab, an unclosed
   bracket / brace / quote, ``a: b: c`` -> test_malformed_yaml[...]
2. unknown names, with "did you mean": top-level ``paramters`` ->
   test_recipe_errors.test_unknown_top_level_key_did_you_mean, a source's ``wieght`` ->
   test_recipe_errors.test_misspelt_parameter_did_you_mean, ``linaer`` ->
   test_recipe_errors.test_unknown_method_lists_installed_and_suggests; here: ``tokenizer_sorce`` ->
   test_unknown_top_level_key, ``TIES`` -> test_unknown_method_in_capitals, ``densty`` ->
   test_unknown_top_level_parameter, ``layer_rnge`` -> test_unknown_key_in_a_slice_source
3. wrong types and out-of-range values -> test_wrong_type_or_out_of_range[...] (weight: abc, a bad gradient
   item, a filter without value, density 1.5, density [1, 2, 3], gamma -1, epsilon 0.7, max_iter 2.5,
   layer_range [0], [0, two] and [-1, 1], a list for dtype and for merge_method); ``normalize: maybe`` ->
   test_recipe_errors.test_wrong_parameter_type, an empty range -> test_recipe_errors.test_empty_layer_range,
   a range past the model's end -> test_recipe_errors.test_layer_range_past_end_is_caught_before_reading_tensor_data.
   (``t`` has no bounds on purpose: slerp extrapolates outside [0, 1], as mergekit does.)
4. model directories: missing -> test_recipe_errors.test_missing_model_directory; a file, no config.json,
   config.json not JSON, no weights -> test_damaged_model[...]
5. damaged safetensors, found when the model is opened while planning (so ``validate`` finds them, and
   ``merge`` writes nothing): truncated data, garbage, a header length past the end, a header that is not
   JSON, offsets past the end, overlapping offsets, offsets that disagree with dtype x shape, a missing
   shard, an index placing a tensor in the wrong shard, a shard outside the model directory ->
   test_damaged_model[...] (and test_every_damaged_model_is_reported_once); a dtype mergehub cannot read
   -> test_unsupported_dtype
6. a tensor missing from one model -> test_tensor_missing_from_one_model
7. shapes that differ -> test_shape_mismatch_names_tensor_and_both_shapes (intermediate_size);
   vocabulary sizes -> test_vocab_mismatch
8. architectures that differ -> test_architecture_mismatch_needs_allow_crimes; with --allow-crimes ->
   test_allow_crimes_merges_llama_with_mistral
9. the recipe file itself: empty, a comment only, a list, a scalar, missing, a directory, not UTF-8 ->
   test_bad_recipe_file[...]
"""

from __future__ import annotations

import json
import shutil
import struct
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mergehub.testing import CliResult, forward_pass, load_state, run_cli
from mergehub.testing import flat_output as flat
from safetensors.torch import load_file, save_file

OUT = "merged"


# -- helpers -------------------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str, name: str = "recipe.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing ``needle``, from the file (not from mergehub)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def run_both(recipe: Path, cwd: Path, *extra: str, merge: bool = True) -> dict[str, CliResult]:
    """``validate`` and ``merge --out merged`` on one recipe, concurrently (two processes)."""
    commands = {"validate": ("validate", recipe, *extra), "merge": ("merge", recipe, "--out", cwd / OUT, *extra)}
    if not merge:
        del commands["merge"]
    with ThreadPoolExecutor(2) as pool:
        futures = {verb: pool.submit(run_cli, *args, cwd=cwd) for verb, args in commands.items()}
        return {verb: future.result() for verb, future in futures.items()}


def assert_clean_failure(result: CliResult, needles: tuple[str, ...]) -> str:
    text = flat(result.output)
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert "mergehub: error" in result.output and "fix:" in text, result.output
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{result.output}"
    return text


def assert_nothing_written(cwd: Path) -> None:
    """No output directory, and nothing beside it named like it (a hidden partial directory, say)."""
    assert not (cwd / OUT).exists()
    assert [p.name for p in cwd.iterdir() if OUT in p.name] == []


def both_fail(recipe: Path, cwd: Path, *needles: str, merge: bool = True) -> str:
    """Both verbs (or ``validate`` alone) fail cleanly with every needle in their message; nothing is written."""
    results = run_both(recipe, cwd, merge=merge)
    for result in results.values():
        text = assert_clean_failure(result, needles)
    assert_nothing_written(cwd)
    return text


#: The case of each parametrised group that ``merge`` runs too (``validate`` runs them all; see the docstring).
MERGE_TOO = {"unclosed-bracket", "density-gradient-out-of-range", "not-utf8", "missing"}


def located(recipe: Path, needle: str, path: str) -> str:
    """``/abs/recipe.yml:LINE key.path`` for the line holding ``needle``."""
    return f"{recipe}:{line_of(recipe, needle)} {path}"


@pytest.fixture
def pair(tiny_models) -> tuple[Path, Path]:
    """Two tiny 2-layer Llamas (shared with the end-to-end tests)."""
    return tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def linear_of(tmp_path: Path, first: Path | str, second: Path | str) -> Path:
    return write(tmp_path, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        models:
          - model: {first}
          - model: {second}
        """)


# -- 1. malformed YAML --------------------------------------------------------------------------------------------
YAML_CASES = {
    "tab": ("merge_method: linear\nmodels:\n  - model: a\n\tparameters: {weight: 1}\n",
            ":4:1", ("a tab character", "replace the tab on that line with spaces")),
    "unclosed-bracket": ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}\ndtype: float32\n",
                         ":3:1", ("the [ opened at line 2, column 9 is never closed", "close the [ opened at line 2")),
    "unclosed-brace": ("merge_method: linear\nparameters: {weight: 1\nmodels:\n  - model: a\n",
                       ":3:", ("the { opened at line 2, column 13 is never closed", "close the { opened at line 2")),
    "unclosed-quote": ('merge_method: "linear\nmodels:\n  - model: a\n',
                       ":4:1", ("the quote opened at line 1", "close the quote opened at line 1")),
    "colon-in-value": ("merge_method: linear\nmodels:\n  - model: a: b\n",
                       ":3:", ("mapping values are not allowed here", "check the indentation and quoting")),
}


@pytest.mark.parametrize("case", YAML_CASES)
def test_malformed_yaml(tmp_path, case):
    text, where, needles = YAML_CASES[case]
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(text)
    both_fail(recipe, tmp_path, "the recipe is not valid YAML", f"{recipe}{where}", *needles, merge=case in MERGE_TOO)


# -- 2. unknown keys, methods and parameters ----------------------------------------------------------------------
def test_unknown_top_level_key(tmp_path, pair):
    a, b = pair
    recipe = write(tmp_path, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        models:
          - model: {a}
          - model: {b}
        tokenizer_sorce: base
        """)
    both_fail(recipe, tmp_path, located(recipe, "tokenizer_sorce", "tokenizer_sorce"),
              "unknown key 'tokenizer_sorce' (did you mean 'tokenizer_source'?)", "allowed keys here:", merge=False)


def test_unknown_method_in_capitals(tmp_path, pair):
    a, b = pair
    recipe = write(tmp_path, f"""
        merge_method: TIES
        base_model: {a}
        parameters: {{weight: 1}}
        models:
          - model: {a}
          - model: {b}
        """)
    both_fail(recipe, tmp_path, located(recipe, "TIES", "merge_method"),
              "unknown merge method 'TIES' (did you mean 'ties'?)", "installed merge methods:", merge=False)


def test_unknown_top_level_parameter(tmp_path, pair):
    a, b = pair
    recipe = write(tmp_path, f"""
        merge_method: ties
        base_model: {a}
        parameters:
          weight: 1
          densty: 0.5
        models:
          - model: {a}
          - model: {b}
        """)
    text = both_fail(recipe, tmp_path, located(recipe, "densty", "parameters.densty"),
                     "unknown parameter 'densty' (did you mean 'density'?)")
    assert "allowed parameters here: weight, density" in text


def test_unknown_key_in_a_slice_source(tmp_path, pair):
    a, b = pair
    recipe = write(tmp_path, f"""
        merge_method: linear
        parameters: {{weight: 1}}
        slices:
          - sources:
              - model: {a}
                layer_range: [0, 2]
              - model: {b}
                layer_rnge: [0, 2]
        """)
    both_fail(recipe, tmp_path, located(recipe, "layer_rnge", "slices[0].sources[1].layer_rnge"),
              "unknown key 'layer_rnge' (did you mean 'layer_range'?)", merge=False)


# -- 3. wrong types and out-of-range values -----------------------------------------------------------------------
# (method, parameters block or None, the source's layer_range, top-level extra, the line's needle, key path, message)
VALUE_CASES = {
    "weight-text": ("linear", "weight: abc", None, "", "weight: abc", "parameters.weight",
                    ("'abc' is not a valid value here: expected number", "write a number such as 0.5")),
    "weight-gradient-item": ("linear", "weight: [1, abc]", None, "", "weight: [1, abc]", "parameters.weight[1]",
                             ("'abc' is not a valid value here: expected number",)),
    "filter-without-value": ("linear", "weight: {filter: mlp}", None, "", "filter: mlp", "parameters.weight",
                             ("missing required key 'value'", "{filter: <part of a tensor name>, value: …}")),
    "density-too-large": ("ties", "weight: 1\ndensity: 1.5", None, "", "density", "parameters.density",
                          ("1.5 is out of range (maximum 1)", "use a value from 0 to 1")),
    "density-gradient-out-of-range": ("ties", "weight: 1\ndensity: [1, 2, 3]", None, "", "density",
                                      "parameters.density[2]", ("3 is out of range (maximum 1)",
                                                                "parameters.density[1]", "use a value from 0 to 1")),
    "gamma-negative": ("breadcrumbs", "weight: 1\ngamma: -1", None, "", "gamma", "parameters.gamma",
                       ("-1 is out of range (minimum 0)", "use a value from 0 to 1")),
    "epsilon-too-large": ("della", "weight: 1\ndensity: 0.5\nepsilon: 0.7", None, "", "epsilon",
                          "parameters.epsilon", ("0.7 is out of range (maximum 0.5)", "use a value from 0 to 0.5")),
    "max-iter-fraction": ("karcher", "max_iter: 2.5", None, "", "max_iter", "parameters.max_iter",
                          ("2.5 is not a valid value here: expected integer", "write a whole number")),
    "layer-range-one-number": ("linear", "weight: 1", "[0]", "", "layer_range: [0]", "slices[0].sources[1].layer_range",
                               ("layer_range must be [start, end], got [0]", "write [start, end], e.g. [0, 4]")),
    "layer-range-text": ("linear", "weight: 1", "[0, two]", "", "layer_range: [0, two]",
                         "slices[0].sources[1].layer_range[1]", ("'two' is not a valid value here: expected integer",)),
    "layer-index-negative": ("linear", "weight: 1", "[-1, 1]", "", "layer_range: [-1, 1]",
                             "slices[0].sources[1].layer_range[0]",
                             ("-1 is out of range (minimum 0)", "layer indices count from 0")),
    "dtype-list": ("linear", "weight: 1", None, "dtype: [float16]", "dtype", "dtype",
                   ("['float16'] is not a valid value here: expected string", "write a text value")),
    "method-list": ("[linear]", "weight: 1", None, "", "merge_method", "merge_method",
                    ("['linear'] is not a valid value here: expected string",)),
}


def value_recipe(tmp_path: Path, a: Path, b: Path, case: str) -> Path:
    method, params, second_range, extra, *_ = VALUE_CASES[case]
    lines = [f"merge_method: {method}", f"base_model: {a}", "parameters:", *("  " + p for p in params.split("\n")),
             "slices:", "  - sources:", f"      - model: {a}", "        layer_range: [0, 2]", f"      - model: {b}",
             f"        layer_range: {second_range or '[0, 2]'}", extra]
    path = tmp_path / "recipe.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", VALUE_CASES)
def test_wrong_type_or_out_of_range(tmp_path, pair, case):
    *_, needle, key_path, needles = VALUE_CASES[case]
    recipe = value_recipe(tmp_path, *pair, case)
    text = both_fail(recipe, tmp_path, located(recipe, needle, key_path), *needles, merge=case in MERGE_TOO)
    assert "1 problem " in text or "2 problems " in text  # only the bad value (or its two bad items)


# -- 4. and 5. model directories and damaged weight files ----------------------------------------------------------
# Every damaged model is its own case (its own test), but all of them sit in one recipe, run once by each verb:
# the planner opens every model before it stops and reports each one's problem at its own line, which is
# itself worth testing, and it saves a torch-importing process per case.
def no_config(model: Path, target: Path) -> None:
    copy_model(model, target)
    (target / "config.json").unlink()


def config_not_json(model: Path, target: Path) -> None:
    copy_model(model, target)
    text = (target / "config.json").read_text()
    (target / "config.json").write_text(text.replace('"architectures"', "architectures", 1))


def no_weights(model: Path, target: Path) -> None:
    copy_model(model, target)
    (target / "model.safetensors").unlink()


def a_file(model: Path, target: Path) -> None:
    target.write_text("not a model\n")


def split(raw: bytes) -> tuple[dict, bytes]:
    """A safetensors file's header and the tensor data after it."""
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def join(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def rewritten(damage: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    """A copy of the model whose model.safetensors is ``damage`` of the real one."""
    def make(model: Path, target: Path) -> None:
        copy_model(model, target)
        (target / "model.safetensors").write_bytes(damage((target / "model.safetensors").read_bytes()))
    return make


def truncated(raw: bytes) -> bytes:
    return raw[: len(raw) - len(split(raw)[1]) // 2]  # cut in the middle of the tensor data


def garbage(raw: bytes) -> bytes:
    return b"this is not a safetensors file, just some text\n" * 20


def header_length_past_end(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw[8:]


def header_not_json(raw: bytes) -> bytes:
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[:8] + b"{not json" + b" " * (length - 9) + raw[8 + length:]


def offsets_past_end(raw: bytes) -> bytes:
    """The last tensor claims twice its rows: dtype x shape still agrees with its span, which ends past the file."""
    header, data = split(raw)
    entry = header["model.norm.weight"]
    start, end = entry["data_offsets"]
    assert end == len(data)  # it is the last one
    entry["shape"][0] *= 2
    entry["data_offsets"] = [start, start + 2 * (end - start)]
    return join(header, data)


def overlapping(raw: bytes) -> bytes:
    header, data = split(raw)
    assert header["lm_head.weight"]["data_offsets"] == [0, 4096]
    header["model.embed_tokens.weight"]["data_offsets"] = [0, 4096]
    return join(header, data)


def missized(raw: bytes) -> bytes:
    header, data = split(raw)
    header["model.embed_tokens.weight"]["shape"] = [64, 8]
    return join(header, data)


SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
MOVED = "model.layers.1.mlp.up_proj.weight"


def sharded(damage: Callable[[Path, dict[str, str]], None] | None) -> Callable[[Path, Path], None]:
    """The model as two shards and an index; ``damage(directory, weight_map)`` runs before the index is written."""
    def make(model: Path, target: Path) -> None:
        target.mkdir()
        shutil.copy(model / "config.json", target)
        state = load_file(model / "model.safetensors")
        names = sorted(state)
        halves = {SHARDS[0]: names[: len(names) // 2], SHARDS[1]: names[len(names) // 2:]}
        for file, part in halves.items():
            save_file({n: state[n] for n in part}, target / file, metadata={"format": "pt"})
        weight_map = {name: file for file, part in halves.items() for name in part}
        if damage is not None:
            damage(target, weight_map)
        (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return make


def move_to_other_shard(target: Path, weight_map: dict[str, str]) -> None:
    weight_map[MOVED] = SHARDS[0] if weight_map[MOVED] == SHARDS[1] else SHARDS[1]


#: case (also the damaged model's directory name) -> (how to make it from a good model, what the message says).
#: ``{size}`` is the size of the good model.safetensors.
NOT_A_SAFETENSORS_FILE = "{case}/model.safetensors is not a readable safetensors file"
DAMAGED: dict[str, tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    "a-file": (a_file, ("model path ./a-file is a file, not a directory", "point at its directory")),
    "no-config": (no_config, ("no-config has no config.json", "point at a Hugging Face model directory")),
    "config-not-json": (config_not_json, ("config-not-json/config.json is not valid JSON", "at line 2, column 3",
                                          "repair the file or download the model again")),
    "no-weights": (no_weights, ("no weights found in no-weights that an installed IO backend can read",
                                "expected model.safetensors")),
    "truncated-data": (rewritten(truncated), (NOT_A_SAFETENSORS_FILE, "go past the end of the file",
                                              "(the file is truncated)", "re-download it")),
    "garbage": (rewritten(garbage), (NOT_A_SAFETENSORS_FILE, "its first 8 bytes give a header length of",
                                     "not a safetensors file")),
    "header-length-past-end": (rewritten(header_length_past_end),
                               (NOT_A_SAFETENSORS_FILE, "give a header length of {size} bytes, but the file has only "
                                                        "{size} bytes")),
    "header-not-json": (rewritten(header_not_json), (NOT_A_SAFETENSORS_FILE, "-byte header is not valid JSON")),
    "offsets-past-end": (rewritten(offsets_past_end),
                         (NOT_A_SAFETENSORS_FILE, "tensor model.norm.weight: its data_offsets [26880, 27008] go past "
                                                  "the end of the file")),
    "overlapping-offsets": (rewritten(overlapping),
                            (NOT_A_SAFETENSORS_FILE, "tensor model.embed_tokens.weight: its data_offsets [0, 4096] "
                                                     "overlap those of lm_head.weight")),
    "offsets-disagree-with-shape": (rewritten(missized),
                                    (NOT_A_SAFETENSORS_FILE, "tensor model.embed_tokens.weight: its data_offsets "
                                                             "[4096, 8192] span 4096 bytes, but F32 of shape [64, 8] "
                                                             "needs 2048")),
    "missing-shard": (sharded(lambda target, weight_map: (target / SHARDS[1]).unlink()),
                      (f"missing-shard/{SHARDS[1]}, which model.safetensors.index.json lists, is missing",
                       "the download is incomplete")),
    "tensor-in-wrong-shard": (sharded(move_to_other_shard),
                              (f"lacks 1 tensor(s) that model.safetensors.index.json places in it: {MOVED}",
                               "the index and the shards come from different versions")),
    "shard-outside-directory": (sharded(lambda target, weight_map: weight_map.update({MOVED: "../x.safetensors"})),
                                ("places tensors in '../x.safetensors', which is not a file beside the index",)),
}


@dataclass
class DamagedRun:
    recipe: Path
    results: dict[str, CliResult]
    size: int  # of the good model.safetensors


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, tiny_models) -> DamagedRun:
    """One recipe merging a good model with every damaged one, run once by each verb."""
    good, source = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    root = tmp_path_factory.mktemp("damaged")
    for case, (make, _) in DAMAGED.items():
        make(source, root / case)
    sharded(None)(source, root / "good-shards")
    entries = "".join(f"  - model: ./{case}\n" for case in DAMAGED)
    recipe = write(root, f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {good}\n{entries}")
    control = write(root, f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {good}\n"
                          "  - model: ./good-shards\n", "control.yml")
    results = run_both(recipe, root) | {"control": run_cli("validate", control, cwd=root)}
    return DamagedRun(recipe, results, (source / "model.safetensors").stat().st_size)


def problem_block(text: str, recipe: Path, line: int) -> str:
    """The part of a flattened RecipeError about the problem at ``line``: up to the next location."""
    start = text.index(f"{recipe}:{line} ")
    following = text.find(f"{recipe}:", start + 1)
    return text[start: following if following != -1 else len(text)]


def test_every_damaged_model_is_reported_once(damaged):
    assert damaged.results["control"].returncode == 0, damaged.results["control"].output  # undamaged shards are fine
    for verb in ("validate", "merge"):
        text = assert_clean_failure(damaged.results[verb], (f"{len(DAMAGED)} problems in recipe {damaged.recipe}",))
        assert text.count(f"{damaged.recipe}:") == len(DAMAGED)  # one location per model
    assert_nothing_written(damaged.recipe.parent)


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_model(damaged, case):
    recipe, needles = damaged.recipe, DAMAGED[case][1]
    line = recipe.read_text().splitlines().index(f"  - model: ./{case}") + 1
    for verb in ("validate", "merge"):
        block = problem_block(assert_clean_failure(damaged.results[verb], ()), recipe, line)
        assert block.startswith(f"{recipe}:{line} models[{line - 4}].model "), block
        for needle in needles:
            assert needle.format(case=case, size=damaged.size) in block, f"{needle!r} not in {block!r}"
        assert "fix:" in block
    assert_nothing_written(recipe.parent)


def test_unsupported_dtype(tmp_path, pair):
    bad = copy_model(pair[1], tmp_path / "bad")
    state = load_file(bad / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.int32).to(torch.uint16)
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    recipe = linear_of(tmp_path, pair[0], "./bad")
    both_fail(recipe, tmp_path, "tensor model.norm.weight in bad/model.safetensors has dtype U16, which mergehub "
                                "cannot read", "convert the model to one of: BF16, F16, F32", merge=False)


# -- 6. and 7. tensors missing or of different shapes ---------------------------------------------------------------
def test_tensor_missing_from_one_model(tmp_path, pair):
    holey = copy_model(pair[1], tmp_path / "holey")
    state = load_file(holey / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, holey / "model.safetensors", metadata={"format": "pt"})
    recipe = linear_of(tmp_path, pair[0], "./holey")
    text = both_fail(recipe, tmp_path, located(recipe, "./holey", "models[1].model"),
                     "tensor model.layers.1.mlp.up_proj.weight is missing from ./holey",
                     "the checkpoint does not match its config.json")
    assert "1 problem " in text


def narrower_mlp(model: Path, target: Path, size: int) -> Path:
    """``model`` with its MLP cut to ``size`` channels: a real checkpoint of another intermediate_size."""
    copy_model(model, target)
    state = load_file(target / "model.safetensors")
    for name in list(state):
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            state[name] = state[name][:size].clone()
        elif name.endswith("down_proj.weight"):
            state[name] = state[name][:, :size].clone()
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "intermediate_size": size}))
    return target


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path, pair):
    a, b = pair
    narrow = narrower_mlp(b, tmp_path / "narrow", 24)
    assert load_state(a)["model.layers.0.mlp.down_proj.weight"].shape == (16, 32)
    forward_pass(narrow)  # a model transformers loads: only the shapes differ
    recipe = linear_of(tmp_path, a, "./narrow")
    text = both_fail(recipe, tmp_path, located(recipe, "models:", "models"),
                     f"tensor model.layers.0.mlp.down_proj.weight has different shapes: {a} (16, 32), "
                     "./narrow (16, 24)",
                     f"tensor model.layers.1.mlp.up_proj.weight has different shapes: {a} (32, 16), ./narrow (24, 16)",
                     "these models do not have the same shapes; they cannot be merged")
    assert "6 problems" in text  # gate, up and down of each of the 2 layers, nothing else


# -- 8. architectures ---------------------------------------------------------------------------------------------
def test_architecture_mismatch_needs_allow_crimes(tmp_path, tiny_models, pair):
    mistral = tiny_models("ma", arch="mistral", seed=6)
    recipe = linear_of(tmp_path, pair[0], mistral)
    both_fail(recipe, tmp_path, f"the models have different architectures: {pair[0]} (LlamaForCausalLM), "
                                f"{mistral} (MistralForCausalLM)", "pass --allow-crimes to try anyway")


def test_allow_crimes_merges_llama_with_mistral(tmp_path, tiny_models, pair):
    a, mistral = pair[0], tiny_models("ma", arch="mistral", seed=6)
    recipe = linear_of(tmp_path, a, mistral)
    results = run_both(recipe, tmp_path, "--allow-crimes")
    for result in results.values():
        assert result.returncode == 0, result.output
    merged, sa, sm = load_state(tmp_path / OUT), load_state(a), load_state(mistral)
    assert set(merged) == set(sa) == set(sm)
    for name in merged:
        torch.testing.assert_close(merged[name], (sa[name] + sm[name]) / 2, rtol=0, atol=1e-6)
    forward_pass(tmp_path / OUT)


# -- 9. the recipe file itself -----------------------------------------------------------------------------------
def make_recipe_file(tmp_path: Path, case: str) -> Path:
    path = tmp_path / "recipe.yml"
    if case == "directory":
        path.mkdir()
    elif case == "not-utf8":
        path.write_bytes(b"merge_method: linear\nname: caf\xe9 merge\nmodels:\n  - model: a\n")
    elif case != "missing":
        texts = {"empty": "", "comment-only": "# nothing yet\n", "list": "- merge_method: linear\n- models: []\n",
                 "scalar": "linear\n"}
        path.write_text(texts[case])
    return path


RECIPE_FILE_CASES = {
    "empty": ("the recipe {path} is empty", "write a merge_method and models or slices"),
    "comment-only": ("the recipe {path} is empty",),
    "list": ("{path}:1", "but this one is a list", "without a leading '- '"),
    "scalar": ("{path}:1", "but this one is a single value, 'linear'", "at the top level of the file"),
    "missing": ("recipe file not found: {path}", "check the path you passed"),
    "directory": ("the recipe {path} is a directory, not a YAML file", "pass the recipe file itself"),
    "not-utf8": ("the recipe {path} is not UTF-8 text (byte 0xe9 on line 2)", "where: {path}:2",
                 "save the file with UTF-8 encoding"),
}


@pytest.mark.parametrize("case", RECIPE_FILE_CASES)
def test_bad_recipe_file(tmp_path, case):
    path = make_recipe_file(tmp_path, case)
    needles = (needle.format(path=path) for needle in RECIPE_FILE_CASES[case])
    both_fail(path, tmp_path, *needles, merge=case in MERGE_TOO)
