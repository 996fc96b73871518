"""The Qwen MoE formats through the real CLI: Qwen3 fine-tunes to Qwen3-MoE, Qwen2 fine-tunes plus a shared
expert to Qwen2-MoE. transformers loads and runs each output; every expert (and the shared expert) holds
its source's bytes; a source of the wrong family is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mergehub.testing import build_tiny, forward_pass, load_state, model_class, run_cli


@pytest.fixture(scope="module")
def family_sources(tmp_path_factory):
    def build(family: str) -> dict[str, Path]:
        root = tmp_path_factory.mktemp(family)
        return {name: build_tiny(root / name, family, layers=2, seed=seed) for name, seed in
                (("base", 0), ("a", 1), ("b", 2), ("s", 3))}
    return build


def write_recipe(path: Path, sources: dict[str, Path], shared: bool) -> Path:
    text = (f"base_model: {sources['base']}\nexperts:\n  - source_model: {sources['a']}\n"
            f"  - source_model: {sources['b']}\ngate_mode: random\nexperts_per_token: 2\n")
    if shared:
        text += f"shared_experts:\n  - source_model: {sources['s']}\n"
    path.write_text(text)
    return path


def check_experts(out: dict, sources: dict[str, Path], layers: int = 2) -> None:
    states = [load_state(sources[n]) for n in ("a", "b")]
    for layer in range(layers):
        mlp = f"model.layers.{layer}.mlp"
        for e, state in enumerate(states):
            gate_up = torch.cat([state[f"{mlp}.gate_proj.weight"], state[f"{mlp}.up_proj.weight"]])
            assert torch.equal(out[f"{mlp}.experts.gate_up_proj"][e], gate_up)
            assert torch.equal(out[f"{mlp}.experts.down_proj"][e], state[f"{mlp}.down_proj.weight"])


def test_qwen3_fine_tunes_become_qwen3_moe(family_sources, tmp_path):
    sources = family_sources("qwen3")
    result = run_cli("moe", write_recipe(tmp_path / "r.yml", sources, False), "--out", tmp_path / "out", "--seed", "1")
    assert result.returncode == 0, result.output
    assert model_class(tmp_path / "out").__name__ == "Qwen3MoeForCausalLM"
    assert torch.isfinite(forward_pass(tmp_path / "out")).all()
    check_experts(load_state(tmp_path / "out"), sources)


def test_qwen2_fine_tunes_and_a_shared_expert_become_qwen2_moe(family_sources, tmp_path):
    sources = family_sources("qwen2")
    result = run_cli("moe", write_recipe(tmp_path / "r.yml", sources, True), "--out", tmp_path / "out", "--seed", "1")
    assert result.returncode == 0, result.output
    assert "format qwen2_moe" in result.flat, result.output
    assert model_class(tmp_path / "out").__name__ == "Qwen2MoeForCausalLM"
    assert torch.isfinite(forward_pass(tmp_path / "out")).all()
    out, shared = load_state(tmp_path / "out"), load_state(sources["s"])
    check_experts(out, sources)
    for layer in range(2):
        mlp = f"model.layers.{layer}.mlp"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert torch.equal(out[f"{mlp}.shared_expert.{proj}.weight"], shared[f"{mlp}.{proj}.weight"])
        assert out[f"{mlp}.shared_expert_gate.weight"].shape[0] == 1


def test_qwen2_without_a_shared_expert_names_why_no_format_fits(family_sources, tmp_path):
    sources = family_sources("qwen2")
    result = run_cli("moe", write_recipe(tmp_path / "r.yml", sources, False), "--out", tmp_path / "out")
    assert result.returncode == 1, result.output
    assert "qwen2_moe: Qwen2-MoE needs exactly one shared expert (got 0)" in result.flat, result.output
    assert "qwen3_moe: needs qwen3 sources only (got qwen2)" in result.flat, result.output
    assert not (tmp_path / "out").exists()
