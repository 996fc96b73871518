"""NaN or Inf in a merge result stops the run, naming the tensor and where the values came from."""

from __future__ import annotations

import shutil

import torch
from mergehub.testing import load_state, run_cli
from safetensors.torch import load_file, save_file

NAME = "model.layers.1.self_attn.q_proj.weight"


def test_nan_from_an_input_names_the_tensor_and_the_model(tmp_path, tiny_models):
    good = tiny_models("good", layers=2, seed=1)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_models("bad", layers=2, seed=2), bad)
    state = load_file(bad / "model.safetensors")
    state[NAME][0, 0] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {good}\n  - model: {bad}\n")

    result = run_cli("merge", cfg, "--out", tmp_path / "out")
    text = result.flat
    assert result.returncode == 1 and "Traceback" not in result.output
    assert f"1 NaN/Inf values in {NAME}" in text and str(bad) in text and "--allow-nonfinite" in text
    assert not (tmp_path / "out").exists()
    assert "finished tensors are kept in" in text and "--resume continues" in text  # the tensors before it

    allowed = run_cli("merge", cfg, "--out", tmp_path / "out", "--allow-nonfinite", "--resume")
    assert allowed.returncode == 0, allowed.output
    merged = load_state(tmp_path / "out")[NAME]
    assert torch.isnan(merged[0, 0]) and int(torch.isnan(merged).sum()) == 1


def test_nan_made_by_the_method_from_finite_inputs(tmp_path, tiny_models):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cfg = tmp_path / "r.yaml"  # normalised weights that sum to zero: 0/0 and x/0 in every tensor
    cfg.write_text(f"merge_method: linear\nparameters: {{normalize: true}}\nmodels:\n"
                   f"  - model: {a}\n    parameters: {{weight: 1}}\n  - model: {b}\n    parameters: {{weight: -1}}\n")
    result = run_cli("merge", cfg, "--out", tmp_path / "out")
    text = result.flat
    assert result.returncode == 1 and "Traceback" not in result.output
    assert "NaN/Inf values in model.embed_tokens.weight" in text and "method 'linear' produced them from finite inputs" in text
    assert not (tmp_path / "out").exists()


def test_the_fast_check_finds_every_nan_and_inf_and_no_false_alarm():
    from mergehub.run.finite import all_finite

    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(1000, dtype=torch.float32).to(dtype)
        assert all_finite(x)
        for bad in (float("nan"), float("inf"), float("-inf")):
            for where in (0, 499, 999):
                y = x.clone()
                y[where] = bad
                assert not all_finite(y), (dtype, bad, where)
    big = torch.full((64,), 60000.0, dtype=torch.float16)  # finite, but its float16 sum overflows
    assert torch.isinf(big.sum()) and all_finite(big)
