"""Hub ids resolve through the real huggingface_hub code path, offline, from a local cache."""

from __future__ import annotations

import torch
from mergehub.testing import forward_pass, load_state, populate_hub_cache, run_cli


def test_hub_id_from_offline_cache(tmp_path, tiny_models):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "tiny-org/tiny-a", a)
    populate_hub_cache(cache, "tiny-org/tiny-b", b, revision="v1")
    cfg = tmp_path / "r.yaml"
    cfg.write_text("merge_method: linear\nparameters: {weight: 1}\nmodels:\n"
                   "  - model: tiny-org/tiny-a\n  - model: tiny-org/tiny-b@v1\n")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = run_cli("merge", cfg, "--out", tmp_path / "out", env=env)
    assert result.returncode == 0, result.output
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert all(torch.allclose(out[n], (sa[n] + sb[n]) / 2, atol=1e-6) for n in sa)
    card = (tmp_path / "out/README.md").read_text()
    assert "base_model:\n- tiny-org/tiny-a\n- tiny-org/tiny-b\nbase_model_relation: merge\n" in card
    assert "- `tiny-org/tiny-b@v1`" in card  # the revision is in the body, not in the front matter's ids
    forward_pass(tmp_path / "out")


def test_missing_hub_model_offline_is_a_clear_error(tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("merge_method: passthrough\nmodels:\n  - model: nobody/nothing\n")
    result = run_cli("validate", cfg, env={"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and "Traceback" not in result.output
    assert "nobody/nothing" in result.output and "offline" in result.output and "r.yaml:3" in result.output
