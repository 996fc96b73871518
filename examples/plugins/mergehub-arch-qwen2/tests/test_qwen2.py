"""Tests of the Qwen2 definition: against the core schema, against a real checkpoint, and in a real merge."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import torch
from mergehub.testing import (
    core_schema,
    forward_pass,
    load_state,
    run_cli,
    stack_by_hand,
)

DEFINITION = json.loads(resources.files("mergehub_arch_qwen2").joinpath("qwen2.json").read_text("utf-8"))
INFERRED = "no installed architecture plugin knows Qwen2ForCausalLM"


def build_tiny_qwen2(path: Path, seed: int) -> Path:
    """A four-layer Qwen2 saved by transformers itself, every tensor (biases included) distinct per seed.
    Layers 2 and 3 use a sliding window of 2 tokens (layer_types: full, full, sliding, sliding)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=64, max_position_embeddings=64,
                                      tie_word_embeddings=False, use_sliding_window=True, sliding_window=2,
                                      max_window_layers=2)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # biases start at 0 and norms at 1: make them differ between the models
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen2_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qwen2")
    return build_tiny_qwen2(root / "a", seed=1), build_tiny_qwen2(root / "b", seed=2)


def linear_recipe(directory: Path, a: Path, b: Path) -> Path:
    recipe = directory / "linear.yml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.7}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.3}}}}\ndtype: float32\n")
    return recipe


def test_definition_validates_against_the_core_schema() -> None:
    jsonschema.Draft202012Validator(core_schema("architecture")).validate(DEFINITION)


def test_plugin_registers_the_definition(fresh_registry) -> None:
    spec = fresh_registry.architecture_for("Qwen2ForCausalLM", "qwen2")
    assert spec is not None and spec.name == "qwen2"
    assert fresh_registry.architectures["qwen2"].plugin.distribution == "mergehub-arch-qwen2"


def test_definition_names_every_tensor_of_a_real_checkpoint(qwen2_models: tuple[Path, Path]) -> None:
    layers = json.loads((qwen2_models[0] / "config.json").read_text())[DEFINITION["num_layers_key"]]
    named = {w["name"] for w in DEFINITION["pre_weights"] + DEFINITION["post_weights"]}
    named |= {w["name"].replace("{layer}", str(i)) for w in DEFINITION["layer_weights"] for i in range(layers)}
    assert named == set(load_state(qwen2_models[0]))


def test_linear_merge_uses_the_definition(qwen2_models: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = qwen2_models
    out = tmp_path / "merged"

    result = run_cli("merge", linear_recipe(tmp_path, a, b), "--out", out)

    assert result.returncode == 0, result.output
    assert INFERRED not in result.output
    merged, state_a, state_b = load_state(out), load_state(a), load_state(b)
    assert set(merged) == set(state_a)
    name = "model.layers.1.self_attn.k_proj.bias"  # a tensor Llama's layout does not have
    expected = (0.7 * state_a[name] + 0.3 * state_b[name]) / (0.7 + 0.3)
    torch.testing.assert_close(merged[name], expected)
    forward_pass(out)


def test_depth_upscaling_rebuilds_layer_types(qwen2_models: tuple[Path, Path], tmp_path: Path) -> None:
    """Layers [0, 3) of A on layers [1, 4) of B: six layers whose sliding/full pattern is their sources'."""
    a, b = qwen2_models
    recipe = tmp_path / "upscale.yml"
    recipe.write_text(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 3]}}]\n"
                      f"  - sources: [{{model: {b}, layer_range: [1, 4]}}]\ndtype: float32\n")
    out = tmp_path / "merged"

    result = run_cli("merge", recipe, "--out", out)

    assert result.returncode == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert config["layer_types"] == ["full_attention", "full_attention", "sliding_attention",
                                     "full_attention", "sliding_attention", "sliding_attention"]
    ids = list(range(1, 13))  # longer than the window, so a wrong pattern changes the logits
    torch.testing.assert_close(forward_pass(out, ids), stack_by_hand([(a, 0, 3), (b, 1, 4)], ids=ids))


def test_without_the_plugin_the_core_infers_the_layout_and_warns(qwen2_models: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    everything = "mergehub-arch-qwen2,mergehub-arch-transformers"  # the transformers plugin would derive it
    result = run_cli("merge", linear_recipe(tmp_path, *qwen2_models), "--out", tmp_path / "merged",
                     env={"MERGEHUB_DISABLE_PLUGINS": everything})

    assert result.returncode == 0, result.output
    assert INFERRED in result.output
