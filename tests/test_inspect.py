"""``mergehub inspect MODEL``: how mergehub sees a model family, on tiny real checkpoints of several families
(uniform, hybrid linear/full attention, image-text with a vision tower, tied embeddings), through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mergehub.testing import HeadersOnly, build_tiny_model, populate_hub_cache, run_cli

#: Tiny text sizes shared by the families built here.
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "vocab_size": 96, "max_position_embeddings": 64}
TRANSFORMERS = "derived from transformers (mergehub-arch-transformers)"


def save(model: Any, path: Path, **kwargs: Any) -> Path:
    """Noise on every parameter (norms are initialised to constants), then transformers' own save_pretrained."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    import transformers as tf

    root = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    built = {
        "qwen3": save(tf.Qwen3ForCausalLM(tf.Qwen3Config(num_hidden_layers=4, **TEXT)), root / "qwen3"),
        # linear attention on layers 0 and 2, full attention on 1 and 3
        "qwen3_5": save(tf.Qwen3_5ForCausalLM(tf.Qwen3_5TextConfig(
            num_hidden_layers=4, full_attention_interval=2, linear_key_head_dim=8, linear_value_head_dim=8,
            linear_num_key_heads=2, linear_num_value_heads=2, **TEXT)), root / "qwen3_5"),
        "llama_tied": build_tiny_model(root / "llama_tied", tied=True),
    }
    gemma3 = tf.Gemma3Config(
        text_config={"num_hidden_layers": 4, "sliding_window_pattern": 2, "sliding_window": 16,
                     "query_pre_attn_scalar": 16, **TEXT},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 4},
        mm_tokens_per_image=4, boi_token_index=90, eoi_token_index=91, image_token_index=92)
    # transformers 5's own tensor names (model.language_model.*, model.vision_tower.*), which it derives layouts for
    built["gemma3"] = save(tf.Gemma3ForConditionalGeneration(gemma3), root / "gemma3", save_original_format=False)
    # Qwen3 checkpoints on the Hub predate layer_types in config.json: the config class derives it
    config = json.loads((built["qwen3"] / "config.json").read_text())
    del config["layer_types"]
    (built["qwen3"] / "config.json").write_text(json.dumps(config))
    return built


def inspect_json(path: Path | str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("inspect", path, "--json", env=env)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)


def test_uniform_model(models):
    report = inspect_json(models["qwen3"])
    assert report["model"] == str(models["qwen3"])
    assert report["architecture"] == "Qwen3ForCausalLM" and report["model_type"] == "qwen3"
    assert report["definition"] == {"name": "qwen3", "origin": TRANSFORMERS, "warnings": []}
    assert report["main_stack"] == {"num_layers_key": "num_hidden_layers", "layers": 4}
    assert report["layer_kinds"] == [{"layers": [0, 1, 2, 3], "tensors": 11, "added": [], "missing": []}]
    assert report["other_stacks"] == []
    assert report["layer_config"] == [{"key": "layer_types", "form": "list", "value": ["full_attention"] * 4,
                                       "source": "derived"}]
    assert report["tied"] == {"key": "tie_word_embeddings", "value": False, "pairs": [
        {"name": "lm_head.weight", "tied_to": "model.embed_tokens.weight", "own_copy": True}]}
    assert report["vocabulary"] == [{"name": "model.embed_tokens.weight", "axis": 0, "shape": [96, 32]},
                                    {"name": "lm_head.weight", "axis": 0, "shape": [96, 32]}]
    assert report["uncovered"] == []


def test_hybrid_model_has_two_layer_kinds(models):
    report = inspect_json(models["qwen3_5"])
    assert report["definition"]["origin"] == TRANSFORMERS
    assert report["main_stack"]["layers"] == 4
    linear, full = report["layer_kinds"]
    assert linear["layers"] == [0, 2] and full["layers"] == [1, 3]
    assert linear["added"] == linear["missing"] == []
    assert {"linear_attn.A_log", "linear_attn.conv1d.weight", "linear_attn.in_proj_qkv.weight"} <= set(full["missing"])
    assert all(tail.startswith("linear_attn.") for tail in full["missing"])
    assert {"self_attn.q_proj.weight", "self_attn.o_proj.weight"} <= set(full["added"])
    assert full["tensors"] == linear["tensors"] - len(full["missing"]) + len(full["added"])
    assert report["layer_config"][0]["value"] == ["linear_attention", "full_attention"] * 2
    assert report["uncovered"] == []


def test_image_text_model_shows_its_vision_stack(models):
    report = inspect_json(models["gemma3"])
    assert report["architecture"] == "Gemma3ForConditionalGeneration"
    assert report["definition"]["origin"] == TRANSFORMERS
    assert report["main_stack"] == {"num_layers_key": "text_config.num_hidden_layers", "layers": 4}
    assert len(report["layer_kinds"]) == 1 and report["layer_kinds"][0]["layers"] == [0, 1, 2, 3]
    assert report["other_stacks"] == [{"prefix": "model.vision_tower.encoder.layers", "layers": 2, "tensors": 32}]
    assert report["layer_config"] == [{"key": "text_config.layer_types", "form": "list",
                                       "value": ["sliding_attention", "full_attention"] * 2, "source": "config.json"}]
    assert report["tied"]["value"] is True
    assert report["tied"]["pairs"] == [
        {"name": "lm_head.weight", "tied_to": "model.language_model.embed_tokens.weight", "own_copy": False}]
    assert {"name": "model.language_model.embed_tokens.weight", "axis": 0, "shape": [96, 32]} in report["vocabulary"]
    assert report["uncovered"] == []


def test_tied_llama_from_its_plugin(models):
    report = inspect_json(models["llama_tied"])
    assert report["definition"] == {"name": "llama", "origin": "plugin mergehub-arch-llama", "warnings": []}
    assert report["main_stack"] == {"num_layers_key": "num_hidden_layers", "layers": 2}
    assert report["tied"] == {"key": "tie_word_embeddings", "value": True, "pairs": [
        {"name": "lm_head.weight", "tied_to": "model.embed_tokens.weight", "own_copy": False}]}
    assert report["vocabulary"] == [{"name": "model.embed_tokens.weight", "axis": 0, "shape": [64, 16]},
                                    {"name": "lm_head.weight", "axis": 0, "shape": None}]
    assert report["layer_config"] == [] and report["uncovered"] == []


def test_inferred_without_the_transformers_plugin(models):
    report = inspect_json(models["qwen3"], env={"MERGEHUB_DISABLE_PLUGINS": "mergehub-arch-transformers"})
    assert report["definition"]["origin"] == "inferred"
    assert report["definition"]["name"] == "inferred"
    assert "Qwen3ForCausalLM" in report["definition"]["warnings"][0]
    assert report["main_stack"]["layers"] == 4
    assert len(report["layer_kinds"]) == 1
    assert report["uncovered"] == []


def test_hub_id_from_the_offline_cache(models, tmp_path):
    snapshot = populate_hub_cache(tmp_path / "hub", "tiny-org/tiny-llama", models["llama_tied"], revision="v1")
    report = inspect_json("tiny-org/tiny-llama@v1", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert report["model"] == "tiny-org/tiny-llama@v1"
    assert Path(report["directory"]) == snapshot
    assert report["main_stack"]["layers"] == 2


def test_human_output(models):
    result = run_cli("inspect", models["qwen3_5"])
    assert result.returncode == 0, result.output
    text = result.flat
    for fact in ("Qwen3_5ForCausalLM", "model_type qwen3_5_text", f"qwen3_5_text, {TRANSFORMERS}",
                 "4 (num_hidden_layers)", "layer kinds (2)", "0, 2", "1, 3", "+ self_attn.q_proj.weight",
                 "- linear_attn.A_log", "layer_types", "[linear_attention, full_attention] x 2", "config.json",
                 "lm_head.weight", "model.embed_tokens.weight", "96 x 32", "other stacks: none",
                 "every tensor of the checkpoint is covered"):
        assert fact in text, f"{fact!r} not in:\n{result.output}"


@pytest.mark.parametrize("problem", ["missing", "bad config"])
def test_clean_error(tmp_path, problem):
    target = tmp_path / "model"
    if problem == "bad config":
        target.mkdir()
        (target / "config.json").write_text("{not json")
    result = run_cli("inspect", target)
    assert result.returncode != 0
    assert "Traceback" not in result.output
    expected = "model directory not found" if problem == "missing" else "config.json is not valid JSON"
    assert expected in result.flat, result.output


@pytest.mark.parametrize("name", ["qwen3", "qwen3_5", "gemma3", "llama_tied"])
def test_reads_no_tensor_data(models, name, monkeypatch, capsys):
    """The verb in-process, every reader the real IO backend opens wrapped: headers pass, tensor data fails the test."""
    import mergehub.models.loader
    from mergehub.cli.main import VERBS, build_parser

    real_open, headers = mergehub.models.loader.open_reader, []
    monkeypatch.setattr(mergehub.models.loader, "open_reader", lambda *a, **k: HeadersOnly(real_open(*a, **k), headers))
    assert VERBS["inspect"].run(build_parser().parse_args(["inspect", str(models[name]), "--json"])) == 0
    report = json.loads(capsys.readouterr().out)
    assert headers, "the guard never saw the reader"
    assert [v["name"] for v in report["vocabulary"] if v["shape"]] == headers
