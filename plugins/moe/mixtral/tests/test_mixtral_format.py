"""The Mixtral format's own decisions, without a merge: which sources it takes and the config it writes.
(tests/test_moe.py assembles Mixtral models from tiny Llama and Mistral checkpoints through the CLI.)"""

from __future__ import annotations

from mergehub_moe_mixtral.format import Mixtral

LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64, "tie_word_embeddings": True,
         "architectures": ["LlamaForCausalLM"]}


def test_accepts_llama_and_mistral_of_one_family_only():
    mixtral = Mixtral()
    assert mixtral.rejects(LLAMA, [LLAMA, LLAMA], []) is None
    mistral = {**LLAMA, "model_type": "mistral"}
    assert mixtral.rejects(mistral, [mistral], []) is None
    assert "all of one family" in mixtral.rejects(LLAMA, [mistral], [])
    assert "got qwen2" in mixtral.rejects({**LLAMA, "model_type": "qwen2"}, [], [])
    assert mixtral.rejects(LLAMA, [LLAMA], [LLAMA]) == "Mixtral has no shared experts"
    assert "biases" in mixtral.rejects({**LLAMA, "attention_bias": True}, [LLAMA], [])


def test_config_keeps_the_base_sizes_and_sets_the_experts():
    config = Mixtral().config(LLAMA, 4, 2, 0)
    assert config["architectures"] == ["MixtralForCausalLM"] and config["model_type"] == "mixtral"
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (4, 2)
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (16, 32, 2)
    assert config["tie_word_embeddings"] is True and config.get("sliding_window") is None


def test_tensors_replace_each_layers_mlp_with_router_and_fused_experts():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.norm.weight"]
    tensors = Mixtral().tensors(LLAMA, names, 2, 0)
    assert [t.name for t in tensors] == ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                        "model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.gate_up_proj",
                                        "model.layers.0.mlp.experts.down_proj", "model.norm.weight"]
    gate_up = tensors[3]
    assert gate_up.per_expert == 2
    assert [(p.source, p.index, p.tensor.rsplit(".", 2)[-2]) for p in gate_up.pieces] == [
        ("expert", 0, "gate_proj"), ("expert", 0, "up_proj"), ("expert", 1, "gate_proj"), ("expert", 1, "up_proj")]
    assert all(p.residual for p in tensors[4].pieces) and not any(p.residual for p in gate_up.pieces)
