"""The derived definitions against real tiny checkpoints saved by transformers, in both naming formats."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
import transformers
from mergehub.testing import core_schema
from mergehub_arch_transformers.check import check_config
from mergehub_arch_transformers.derive import derive
from safetensors import safe_open


def save(model: torch.nn.Module, path: Path, original: bool = True) -> tuple[dict, list[str]]:
    model.save_pretrained(path, save_original_format=original)
    with safe_open(path / "model.safetensors", "pt") as f:
        names = list(f.keys())
    return json.loads((path / "config.json").read_text()), names


def gemma3_vl() -> torch.nn.Module:
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                head_dim=16, vocab_size=96, sliding_window_pattern=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    return transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(text_config=text, vision_config=vision,
                                                                                 mm_tokens_per_image=4))


@pytest.mark.parametrize("original", [True, False])
def test_an_image_text_model_in_either_naming(tmp_path: Path, original: bool) -> None:
    config, names = save(gemma3_vl(), tmp_path, original)

    definition = derive(config, names).definition

    jsonschema.Draft202012Validator(core_schema("architecture")).validate(definition)
    stack = "language_model.model.layers" if original else "model.language_model.layers"
    assert {w["name"] for w in definition["layer_weights"]} >= {f"{stack}.{{layer}}.self_attn.q_proj.weight"}
    assert definition["num_layers_key"] == "text_config.num_hidden_layers"
    pre = [w["name"] for w in definition["pre_weights"]]
    assert any("vision_tower" in n and ".1." in n for n in pre)  # the vision stack, merged whole
    post = {w["name"]: w for w in definition["post_weights"]}
    head = next(w for n, w in post.items() if n.endswith("lm_head.weight"))
    assert head["optional"] and head["tied_to"].endswith("embed_tokens.weight") and head["vocab_axis"] == 0
    assert any(n.endswith("norm.weight") for n in post)
    named = set(pre) | set(post) | {w["name"].replace("{layer}", str(i)) for w in definition["layer_weights"] for i in range(4)}
    assert set(names) <= named
    assert {e["key"] for e in definition["layer_config"]} == {"text_config.layer_types"}


def test_hybrid_layers_are_marked_as_varying(tmp_path: Path) -> None:
    config = transformers.Qwen3_5TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=96,
                                            full_attention_interval=2)
    model_config, names = save(transformers.Qwen3_5ForCausalLM(config), tmp_path)

    layers = {w["name"]: w for w in derive(model_config, names).definition["layer_weights"]}

    assert layers["model.layers.{layer}.linear_attn.A_log"].get("varies")
    assert layers["model.layers.{layer}.self_attn.q_proj.weight"].get("varies")
    assert not layers["model.layers.{layer}.input_layernorm.weight"].get("varies")


def test_layer_types_left_out_are_derived(tmp_path: Path) -> None:
    config = transformers.Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, head_dim=16, vocab_size=96)
    model_config, names = save(transformers.Qwen3ForCausalLM(config), tmp_path)
    del model_config["layer_types"]

    definition = derive(model_config, names).definition

    assert definition["layer_values"] == {"layer_types": ["full_attention", "full_attention"]}


def test_the_config_check_finds_tensors_the_config_does_not_describe(tmp_path: Path) -> None:
    config = transformers.Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, head_dim=16, vocab_size=96, tie_word_embeddings=False)
    model_config, _ = save(transformers.Qwen3ForCausalLM(config), tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        shapes = {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}

    assert check_config(model_config, shapes) is None
    three = dict(model_config, num_hidden_layers=3, layer_types=["full_attention"] * 3)
    assert "expected but not written: model.layers.2." in check_config(three, shapes)
    wrong = dict(model_config, num_hidden_layers=3)  # layer_types still lists two layers
    assert "transformers refuses it" in check_config(wrong, shapes)


def test_remote_code_families_are_left_to_inference() -> None:
    config = {"model_type": "acme", "architectures": ["AcmeForCausalLM"], "auto_map": {"AutoModelForCausalLM": "x.Y"}}
    assert derive(config, ["model.layers.0.w"]) is None
