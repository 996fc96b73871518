"""passthrough copies bytes unchanged, or scales."""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub_method_passthrough.method import merge


def test_scale_one_returns_the_same_bytes():
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    out = merge(MergeInputs("t", [x], None, [{"scale": 1.0}], {}))
    assert out.dtype == x.dtype and torch.equal(out, x)


def test_scale_multiplies():
    x = torch.tensor([1.0, -2.0, 0.5])
    out = merge(MergeInputs("t", [x], None, [{"scale": 3.0}], {}))
    torch.testing.assert_close(out, torch.tensor([3.0, -6.0, 1.5]))


def test_scale_reaches_the_tensor_through_a_recipe(tmp_path, tiny_models):
    from mergehub.testing import load_state, run_cli

    a = tiny_models("a", layers=2, seed=1)
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 2], "
                   f"parameters: {{scale: [{{filter: mlp, value: [2, 4]}}, {{value: 1}}]}}}}]\n")
    result = run_cli("merge", cfg, "--out", tmp_path / "out")
    assert result.returncode == 0, result.output
    out, src = load_state(tmp_path / "out"), load_state(a)
    name = "mlp.up_proj.weight"
    assert torch.equal(out[f"model.layers.0.{name}"], src[f"model.layers.0.{name}"] * 2)  # t = 0
    assert torch.equal(out[f"model.layers.1.{name}"], src[f"model.layers.1.{name}"] * 4)  # t = 1
    assert torch.equal(out["model.layers.1.self_attn.q_proj.weight"], src["model.layers.1.self_attn.q_proj.weight"])
