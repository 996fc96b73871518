"""The DeepSeek format's own decisions, without a merge: which sources it takes, the config it writes, the tensor
layout. (test_deepseek_moe.py assembles models through the CLI.)"""

from __future__ import annotations

from mergehub_moe_deepseek.format import DeepseekMoe

LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "vocab_size": 64,
         "max_position_embeddings": 64, "tie_word_embeddings": False, "dtype": "float32",
         "architectures": ["LlamaForCausalLM"], "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}


def test_takes_llama_or_mistral_of_one_family_and_at_most_one_shared_expert():
    fmt = DeepseekMoe()
    assert fmt.rejects(LLAMA, [LLAMA, LLAMA], []) is None
    assert fmt.rejects(LLAMA, [LLAMA], [LLAMA]) is None
    mistral = {**LLAMA, "model_type": "mistral", "sliding_window": None}
    assert fmt.rejects(mistral, [mistral], []) is None
    assert fmt.rejects(LLAMA, [LLAMA], [LLAMA, LLAMA]) == "DeepSeek-MoE takes at most one shared expert (got 2)"
    assert fmt.rejects(LLAMA, [mistral], []) == "needs Llama or Mistral sources, all of one family (got llama, mistral)"
    assert "got qwen2" in fmt.rejects({**LLAMA, "model_type": "qwen2"}, [], [])


def test_refuses_what_deepseeks_code_would_compute_differently():
    fmt = DeepseekMoe()
    reasons = {
        "head_dim": fmt.rejects({**LLAMA, "head_dim": 16}, [LLAMA], []),
        "window": fmt.rejects({**LLAMA, "model_type": "mistral", "sliding_window": 32}, [], []),
        "rope": fmt.rejects({**LLAMA, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}, [], []),
        "legacy rope": fmt.rejects({**LLAMA, "rope_parameters": None, "rope_scaling": {"type": "yarn"}}, [], []),
        "bias": fmt.rejects(LLAMA, [{**LLAMA, "mlp_bias": True}], []),
    }
    assert "head size as hidden_size / num_attention_heads = 8, but these sources use head_dim 16" in reasons["head_dim"]
    assert "no sliding window, and these sources attend to the last 32 tokens only" in reasons["window"]
    assert "only linear and dynamic RoPE scaling, and these sources use 'llama3'" in reasons["rope"]
    assert "these sources use 'yarn'" in reasons["legacy rope"]
    assert reasons["bias"] == "DeepSeek's MLPs have no biases, which these sources use"
    # a window no shorter than the context changes nothing, and attention biases DeepSeek's code has too
    assert fmt.rejects({**LLAMA, "model_type": "mistral", "sliding_window": 64}, [], []) is None
    assert fmt.rejects({**LLAMA, "attention_bias": True}, [LLAMA], []) is None


def test_config_is_the_base_with_deepseeks_keys_and_rope_in_the_keys_its_code_reads():
    config = DeepseekMoe().config(LLAMA, 4, 2, 1)
    assert config["architectures"] == ["DeepseekForCausalLM"] and config["model_type"] == "deepseek"
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("--modeling_deepseek.DeepseekForCausalLM")
    assert {k: config[k] for k in ("n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
                                   "first_k_dense_replace", "moe_layer_freq", "scoring_func", "norm_topk_prob")} == {
        "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "first_k_dense_replace": 0, "moe_layer_freq": 1, "scoring_func": "softmax", "norm_topk_prob": True}
    assert (config["rope_theta"], config["rope_scaling"]) == (500000.0, None)
    assert "rope_parameters" not in config and "dtype" not in config  # the core writes torch_dtype
    assert (config["hidden_size"], config["num_key_value_heads"], config["vocab_size"]) == (16, 1, 64)
    assert DeepseekMoe().config(LLAMA, 2, 1, 0)["n_shared_experts"] is None
    legacy = {**LLAMA, "rope_parameters": None, "rope_theta": 1e6, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    config = DeepseekMoe().config(legacy, 2, 1, 0)
    assert (config["rope_theta"], config["rope_scaling"]) == (1e6, {"type": "linear", "factor": 2.0})


def test_each_layers_mlp_becomes_router_unfused_experts_and_shared_expert():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
             "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight"]
    tensors = DeepseekMoe().tensors(LLAMA, names, 2, 1)
    mlp = "model.layers.0.mlp"
    assert [t.name for t in tensors] == [
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", f"{mlp}.gate.weight",
        *(f"{mlp}.{owner}.{p}.weight" for owner in ("experts.0", "experts.1", "shared_experts")
          for p in ("down_proj", "gate_proj", "up_proj")),
        "model.norm.weight"]
    assert [(p.source, p.index) for p in tensors[2].pieces] == [("router", 0)]
    pieces = [t.pieces for t in tensors[3:12]]
    assert all(len(p) == 1 and t.per_expert is None for p, t in zip(pieces, tensors[3:12]))
    assert [(p[0].source, p[0].index, p[0].tensor, p[0].residual) for p in pieces[:3]] == [
        ("expert", 0, f"{mlp}.down_proj.weight", True), ("expert", 0, f"{mlp}.gate_proj.weight", False),
        ("expert", 0, f"{mlp}.up_proj.weight", False)]
    assert {p[0].source for p in pieces[6:]} == {"shared"}
    assert not any("shared" in t.name for t in DeepseekMoe().tensors(LLAMA, names, 2, 0))

