"""Multi-stage recipes through the real CLI: order, errors, validation up front, reuse, plan figures."""

from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path

import torch
from mergehub.testing import flat_output as flat
from mergehub.testing import forward_pass, load_state, run_cli


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def three_stages(tmp_path: Path, a: Path, b: Path, c: Path, blend_weight: float = 0.5) -> Path:
    """The final stage comes first in the file and uses both named stages; 'stacked' uses 'blend'."""
    return write(tmp_path / "mega.yaml", f"""
        merge_method: linear
        models:
          - {{model: stacked, parameters: {{weight: 1}}}}
          - {{model: {c}, parameters: {{weight: 3}}}}
        ---
        name: stacked
        merge_method: passthrough
        slices:
          - sources: [{{model: blend, layer_range: [0, 1]}}]
          - sources: [{{model: {b}, layer_range: [1, 2]}}]
        ---
        name: blend
        merge_method: linear
        models:
          - {{model: {a}, parameters: {{weight: {blend_weight}}}}}
          - {{model: {b}, parameters: {{weight: 0.5}}}}
        """)


def merge(*args) -> str:
    result = run_cli("merge", *args)
    assert result.returncode == 0, result.output
    return flat(result.output)


def test_three_stages_equal_the_merges_run_by_hand(tmp_path, tiny_models):
    a, b, c = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    text = merge(three_stages(tmp_path, a, b, c), "--out", tmp_path / "final")
    assert "3 stages: blend → stacked → (final)" in text
    # the same three merges, one single-document recipe at a time
    hand = tmp_path / "hand"
    hand.mkdir()
    merge(write(hand / "1.yaml", f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.5}}}}\n"
                                 f"  - {{model: {b}, parameters: {{weight: 0.5}}}}\n"), "--out", hand / "blend")
    merge(write(hand / "2.yaml", f"merge_method: passthrough\nslices:\n  - sources: [{{model: {hand / 'blend'}, layer_range: [0, 1]}}]\n"
                                 f"  - sources: [{{model: {b}, layer_range: [1, 2]}}]\n"), "--out", hand / "stacked")
    merge(write(hand / "3.yaml", f"merge_method: linear\nmodels:\n  - {{model: {hand / 'stacked'}, parameters: {{weight: 1}}}}\n"
                                 f"  - {{model: {c}, parameters: {{weight: 3}}}}\n"), "--out", hand / "final")
    got, expected = load_state(tmp_path / "final"), load_state(hand / "final")
    assert set(got) == set(expected) and all(torch.equal(got[n], expected[n]) for n in got)
    assert sorted(p.name for p in (tmp_path / "final.stages").iterdir()) == ["blend", "stacked"]
    # the maths, independently: layer 0 of the final = (0.5a+0.5b)/1 then (x + 3c)/4
    sa, sb, sc = load_state(a), load_state(b), load_state(c)
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(got[name], ((sa[name] + sb[name]) / 2 + 3 * sc[name]) / 4)
    forward_pass(tmp_path / "final")


def test_mega_verb_and_merge_agree(tmp_path, tiny_models):
    a, b, c = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    cfg = three_stages(tmp_path, a, b, c)
    result = run_cli("mega", cfg, "--out", tmp_path / "out", "--intermediate-dir", tmp_path / "inter")
    assert result.returncode == 0, result.output
    assert (tmp_path / "inter/blend/model.safetensors").exists() and (tmp_path / "out/model.safetensors").exists()
    assert (tmp_path / "out/mergehub_config.yml").read_text().startswith("merge_method: linear")


def test_reuse_and_recompute(tmp_path, tiny_models):
    a, b, c = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    cfg, out = three_stages(tmp_path, a, b, c), tmp_path / "out"
    merge(cfg, "--out", out)
    stamp = {p: (p / "model.safetensors").stat().st_mtime_ns for p in (out, out.parent / "out.stages/blend")}
    second = merge(cfg, "--out", out)
    assert second.count("reused") == 3 and "merged" not in second
    assert all((p / "model.safetensors").stat().st_mtime_ns == t for p, t in stamp.items())
    three_stages(tmp_path, a, b, c, blend_weight=0.25)  # change one stage: it and its dependants rerun
    third = merge(cfg, "--out", out)
    assert "stage blend: merged" in third and "stage stacked: merged" in third and "stage (final): merged" in third
    forced = merge(cfg, "--out", out, "--no-reuse")
    assert forced.count("merged") == 3 and "reused" not in forced


def test_only_the_changed_branch_reruns(tmp_path, tiny_models):
    a, b, c = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    cfg = write(tmp_path / "m.yaml", f"""
        name: left
        merge_method: linear
        models: [{{model: {a}, parameters: {{weight: 1}}}}, {{model: {b}, parameters: {{weight: 1}}}}]
        ---
        name: right
        merge_method: linear
        models: [{{model: {b}, parameters: {{weight: 1}}}}, {{model: {c}, parameters: {{weight: 1}}}}]
        ---
        merge_method: linear
        models: [{{model: left, parameters: {{weight: 1}}}}, {{model: right, parameters: {{weight: 1}}}}]
        """)
    merge(cfg, "--out", tmp_path / "out")
    cfg.write_text(cfg.read_text().replace(f"{{model: {c}, parameters: {{weight: 1}}}}", f"{{model: {c}, parameters: {{weight: 2}}}}"))
    text = merge(cfg, "--out", tmp_path / "out")
    assert "stage left: reused" in text and "stage right: merged" in text and "stage (final): merged" in text


def failure(cfg: Path, *extra) -> str:
    result = run_cli("merge", cfg, "--out", cfg.parent / "out", *extra)
    assert result.returncode == 1 and "Traceback" not in result.output, result.output
    assert not (cfg.parent / "out").exists() and not (cfg.parent / "out.stages").exists()
    return flat(result.output)


def test_unknown_stage_name(tmp_path, tiny_models):
    a = tiny_models("a", layers=2, seed=1)
    cfg = write(tmp_path / "m.yaml", f"""
        name: stage_one
        merge_method: passthrough
        models: [{{model: {a}}}]
        ---
        merge_method: passthrough
        models: [{{model: stage_on}}]
        """)
    text = failure(cfg)
    assert "'stage_on' is neither a stage of this recipe nor a model directory (did you mean 'stage_one'?)" in text
    assert "m.yaml:6 models[0].model" in text


def test_cycle(tmp_path, tiny_models):
    a = tiny_models("a", layers=2, seed=1)
    cfg = write(tmp_path / "m.yaml", f"""
        name: x
        merge_method: linear
        models: [{{model: y, parameters: {{weight: 1}}}}, {{model: {a}, parameters: {{weight: 1}}}}]
        ---
        name: y
        merge_method: linear
        models: [{{model: x, parameters: {{weight: 1}}}}, {{model: {a}, parameters: {{weight: 1}}}}]
        """)
    assert "cycle: x → y → x" in failure(cfg)


def test_duplicate_names_and_two_unnamed(tmp_path, tiny_models):
    a = tiny_models("a", layers=2, seed=1)
    doc = f"merge_method: passthrough\nmodels: [{{model: {a}}}]\n"
    cfg = write(tmp_path / "m.yaml", f"name: s\n{doc}---\nname: s\n{doc}---\n{doc}---\n{doc}")
    text = failure(cfg)
    assert "two stages are named 's' (documents 1 and 2)" in text
    assert "documents 3, 4 have no name" in text


def test_every_stage_is_validated_before_any_runs(tmp_path, tiny_models):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cfg = write(tmp_path / "m.yaml", f"""
        name: first
        merge_method: linear
        models: [{{model: {a}, parameters: {{weight: 1}}}}, {{model: {b}, parameters: {{weight: 1}}}}]
        ---
        name: second
        merge_method: passthrough
        slices:
          - sources: [{{model: first, layer_range: [0, 3]}}]
        ---
        merge_method: linear
        models: [{{model: second, parameters: {{wieght: 1}}}}, {{model: {a}, parameters: {{weight: 1}}}}]
        """)
    text = failure(cfg)
    assert "stage second: layer_range [0, 3] goes past the end" in text and "which has 2 layers" in text
    assert "stage (final): unknown parameter 'wieght' (did you mean 'weight'?)" in text


def test_existing_final_output_is_refused_before_any_stage_runs(tmp_path, tiny_models):
    a, b, c = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    cfg = three_stages(tmp_path, a, b, c)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.txt").write_text("mine")
    result = run_cli("merge", cfg, "--out", tmp_path / "out")
    assert result.returncode == 1 and "already exists" in result.output and "--force" in result.output
    assert not (tmp_path / "out.stages").exists() and (tmp_path / "out/keep.txt").read_text() == "mine"


def data_bytes(directory: Path) -> int:
    """Bytes of tensor data in a model directory's shards (file size minus the safetensors header)."""
    total = 0
    for shard in directory.glob("*.safetensors"):
        with shard.open("rb") as f:
            (header,) = struct.unpack("<Q", f.read(8))
        total += shard.stat().st_size - 8 - header
    return total


def test_plan_figures_match_the_real_run(tmp_path, tiny_models):
    a, b, c = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    cfg, out = three_stages(tmp_path, a, b, c), tmp_path / "out"
    result = run_cli("plan", cfg, "--out", out, "--json")
    assert result.returncode == 0, result.output
    planned = {s["stage"]: s for s in json.loads(result.stdout)["stages"]}
    assert list(planned) == ["blend", "stacked", "(final)"] and not any(s["reuse"] for s in planned.values())
    assert planned["stacked"]["layers"] == 2 and planned["(final)"]["tensors"] == len(load_state(a))
    merge(cfg, "--out", out)
    for stage, directory in (("blend", tmp_path / "out.stages/blend"), ("stacked", tmp_path / "out.stages/stacked"),
                             ("(final)", out)):
        assert planned[stage]["write_bytes"] == data_bytes(directory), stage
    # linear over two float32 inputs reads both inputs of every tensor once
    assert planned["blend"]["read_bytes"] == data_bytes(a) + data_bytes(b)
    again = json.loads(run_cli("plan", cfg, "--out", out, "--json").stdout)
    assert all(s["reuse"] for s in again["stages"]) and again["total"]["write_bytes"] == 0
    table = run_cli("plan", cfg, "--out", out)
    assert table.returncode == 0 and "peak memory" in table.stdout and "reuse" in table.stdout
