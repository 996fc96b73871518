"""Models with different vocabulary sizes are rejected before any work, with both shapes named."""

from __future__ import annotations

from mergehub.testing import run_cli


def test_different_vocab_sizes_are_a_clear_plan_error(tmp_path, tiny_models):
    small, large = tiny_models("v64", layers=2, seed=1, vocab=64), tiny_models("v80", layers=2, seed=2, vocab=80)
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {small}\n  - model: {large}\n")
    for verb in (("validate", cfg), ("merge", cfg, "--out", tmp_path / "out")):
        result = run_cli(*verb)
        text = result.flat
        assert result.returncode == 1 and "Traceback" not in result.output
        assert "model.embed_tokens.weight has different shapes" in text
        assert "(64, 16)" in text and "(80, 16)" in text
        assert "vocabulary" in text and "fix:" in text
    assert not (tmp_path / "out").exists()
