"""mergehub.testkit.tinymodels: every family builds, reloads with transformers, runs, and has the
per-layer variety (sliding/global, linear/full attention, dense/MoE, no-RoPE layers) that merge
tests rely on. A family that silently lost its variety would make those tests pass vacuously.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mergehub.testkit.tinymodels import (
    FAMILIES,
    Family,
    build_tiny,
    family,
    tiny_config,
)
from safetensors import safe_open

INPUT_IDS = [[1, 2, 3, 4, 5]]
VOCAB = 96


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """Build each (family, seed) once per worker: several tests read the same checkpoint."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[tuple[str, int], Path] = {}

    def get(name: str, seed: int) -> Path:
        if (name, seed) not in cache:
            cache[name, seed] = build_tiny(root / f"{name}-{seed}", name, seed=seed)
        return cache[name, seed]

    return get


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every saved tensor of a checkpoint, by name."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            state.update({name: handle.get_tensor(name) for name in handle.keys()})
    return state


def text_config(path: Path) -> dict:
    """The saved config of the language model (nested for multimodal families)."""
    config = json.loads((path / "config.json").read_text())
    return config.get("text_config", config)


def layer_tensors(state: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    """The language model's tensors of one decoder layer, by their name inside the layer."""
    pattern = re.compile(rf"layers\.{layer}\.(.+)")
    return {match.group(1): tensor for name, tensor in state.items()
            if "vision" not in name and "visual" not in name and (match := pattern.search(name))}


def layers_with(state: dict[str, torch.Tensor], fragment: str, layers: int = 4) -> set[int]:
    """The decoder layers that have a tensor whose in-layer name contains ``fragment``."""
    return {layer for layer in range(layers) if any(fragment in name for name in layer_tensors(state, layer))}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_builds_reloads_and_runs(name: str, built: Callable[[str, int], Path]) -> None:
    import transformers

    fam = FAMILIES[name]
    path = built(name, 1)
    saved = json.loads((path / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"]) == (fam.model_type, [fam.architecture])
    model = getattr(transformers, fam.architecture).from_pretrained(path)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(INPUT_IDS)).logits
    assert logits.shape == (1, 5, VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_seeds_give_different_norms(name: str, built: Callable[[str, int], Path]) -> None:
    one, two = tensors(built(name, 1)), tensors(built(name, 2))
    assert one.keys() == two.keys()
    norm = next(key for key in sorted(one) if re.search(r"norm.*\.weight$", key))
    assert not torch.equal(one[norm], two[norm]), norm


# family -> (in-layer tensor name fragment, the layers of 0-3 that have it)
LAYER_TENSORS: dict[str, list[tuple[str, set[int]]]] = {
    "deepseek_v3": [("mlp.experts.", {1, 2, 3}), ("mlp.gate_proj", {0})],
    "qwen3_moe": [("mlp.experts.", {1, 2, 3}), ("mlp.gate_proj", {0})],
    "qwen3_next": [("linear_attn.", {0, 2}), ("self_attn.", {1, 3}), ("mlp.experts.", {0, 1, 2, 3})],
    "qwen3_5": [("linear_attn.", {0, 2}), ("self_attn.", {1, 3})],
    "qwen3_5_vl": [("linear_attn.", {0, 2}), ("self_attn.", {1, 3})],
    "llama4_text": [("feed_forward.experts.", {1, 3}), ("feed_forward.gate_proj", {0, 2})],
    "llama4": [("feed_forward.experts.", {1, 3}), ("feed_forward.gate_proj", {0, 2})],
    "mixtral": [("experts.", {0, 1, 2, 3})],
    # global layers share k and v (attention_k_eq_v): no v_proj there
    "gemma4": [("self_attn.v_proj", {0, 2}), ("self_attn.q_proj", {0, 1, 2, 3})],
    "gemma4_vl": [("self_attn.v_proj", {0, 2}), ("self_attn.q_proj", {0, 1, 2, 3})],
}


@pytest.mark.parametrize("name", sorted(LAYER_TENSORS))
def test_layers_differ_in_tensors(name: str, built: Callable[[str, int], Path]) -> None:
    state = tensors(built(name, 1))
    for fragment, layers in LAYER_TENSORS[name]:
        assert layers_with(state, fragment) == layers, fragment


@pytest.mark.parametrize("name", ["gemma4", "gemma4_vl"])
def test_gemma4_global_layers_have_their_own_head_dim(name: str, built: Callable[[str, int], Path]) -> None:
    state = tensors(built(name, 1))
    sliding, full = layer_tensors(state, 0), layer_tensors(state, 1)
    assert full["self_attn.q_proj.weight"].shape[0] == 2 * sliding["self_attn.q_proj.weight"].shape[0]
    assert full["self_attn.q_norm.weight"].shape != sliding["self_attn.q_norm.weight"].shape


SLIDING_AND_GLOBAL = ["gemma2", "gemma3", "gemma3_vl", "gemma4", "gemma4_vl", "cohere2", "exaone4"]


@pytest.mark.parametrize("name", SLIDING_AND_GLOBAL)
def test_sliding_and_global_layers(name: str, built: Callable[[str, int], Path]) -> None:
    layer_types = text_config(built(name, 1))["layer_types"]
    assert len(layer_types) == 4
    assert {"sliding_attention", "full_attention"} <= set(layer_types)


@pytest.mark.parametrize("name", ["llama4", "llama4_text"])
def test_llama4_has_dense_moe_and_nope_layers(name: str, built: Callable[[str, int], Path]) -> None:
    config = text_config(built(name, 1))
    assert config["moe_layers"] == [1, 3]
    assert set(config["no_rope_layers"]) == {0, 1}  # 0: this layer has no RoPE


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_qwen_layer_types_stay_derived(name: str, built: Callable[[str, int], Path]) -> None:
    config = text_config(built(name, 1))
    assert config["layer_types"] == ["full_attention"] * 4
    assert config["max_window_layers"] <= config["num_hidden_layers"]


@pytest.mark.parametrize(("name", "tied"), [("llama", True), ("gemma3_vl", False), ("qwen2_5_vl", True)])
def test_tied_sets_every_level(name: str, tied: bool, tmp_path: Path) -> None:
    path = build_tiny(tmp_path / name, name, tied=tied)
    config = json.loads((path / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    assert config.get("text_config", {}).get("tie_word_embeddings", tied) is tied
    # transformers does not save a tied head
    assert any(name.endswith("lm_head.weight") for name in tensors(path)) is not tied


def test_dtype_and_size_options(tmp_path: Path) -> None:
    path = build_tiny(tmp_path / "m", "qwen3", layers=2, vocab=40, dtype="bfloat16")
    state = tensors(path)
    assert {tensor.dtype for tensor in state.values()} == {torch.bfloat16}
    assert state["model.embed_tokens.weight"].shape == (40, 32)
    assert layers_with(state, "self_attn.q_proj") == {0, 1}


@pytest.mark.parametrize("model_type", ["olmo3", "smollm3"])
def test_model_type_outside_families(model_type: str, tmp_path: Path) -> None:
    import transformers

    assert model_type not in FAMILIES
    config = tiny_config(model_type)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 4, VOCAB)
    assert config.num_attention_heads <= 4 and config.num_key_value_heads <= 2 and config.intermediate_size <= 64
    fam = family(model_type)
    model = getattr(transformers, fam.architecture).from_pretrained(build_tiny(tmp_path / model_type, model_type))
    with torch.no_grad():
        assert model(input_ids=torch.tensor(INPUT_IDS)).logits.shape == (1, 5, VOCAB)


def test_multimodal_model_type_gets_its_own_class() -> None:
    """The causal LM mapping names Qwen3_5MoeForCausalLM for qwen3_5_moe, which takes the text config."""
    assert family("qwen3_5_moe") == Family("qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration")
    config = tiny_config("qwen3_5_moe")
    assert (config.text_config.hidden_size, config.text_config.num_experts, config.vision_config.depth) == (32, 4, 2)


def test_unknown_name_is_refused() -> None:
    with pytest.raises(KeyError, match="not_a_model"):
        tiny_config("not_a_model")


def test_import_is_cheap() -> None:
    """A pytest plugin imports the module: it must not pull in torch or transformers."""
    code = "import sys, mergehub.testkit.tinymodels; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
