"""``mergehub moe``: mergekit-moe recipes through the real CLI, checked against maths and transformers.

Sources are tiny real Llama/Mistral checkpoints (with a word-level tokenizer for prompt-based gates). The
expert weights must be the sources' bytes; each gate mode must equal an independent computation of
mergekit-moe's definition; an MoE of identical experts that routes every token to all of them must
compute what the dense model computes; a bad recipe gets one clear error and leaves nothing behind.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mergehub.testing import (
    build_tiny_model,
    forward_pass,
    load_state,
    model_class,
    run_cli,
)

WORDS = ["write", "code", "python", "function", "tell", "a", "story", "math", "problem", "poem", "sum"]
EXPERTS = [("a", ["write code", "python function"], ["story"]), ("b", ["tell a story", "a poem"], []),
           ("c", ["math problem", "sum"], [])]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe-sources")
    found = {name: build_tiny_model(root / name, seed=seed, layers=2, words=WORDS)
             for name, seed in (("base", 0), ("a", 1), ("b", 2), ("c", 3))}
    found["mistral"] = build_tiny_model(root / "mistral", arch="mistral", seed=4, layers=2, words=WORDS)
    return found


def recipe(sources: dict[str, Path], mode: str = "hidden", per_token: int = 2, dtype: str = "float32",
           experts=EXPERTS, extra: str = "") -> str:
    lines = [f"base_model: {sources['base']}", "experts:"]
    for name, positive, negative in experts:
        lines.append(f"  - source_model: {sources[name]}")
        if positive:
            lines.append(f"    positive_prompts: {positive}")
        if negative:
            lines.append(f"    negative_prompts: {negative}")
    lines += [f"gate_mode: {mode}", f"experts_per_token: {per_token}", f"dtype: {dtype}"]
    return "\n".join(lines) + "\n" + extra


def assemble(tmp_path: Path, text: str, *extra: str, name: str = "moe"):
    (tmp_path / f"{name}.yml").write_text(text)
    return run_cli("moe", tmp_path / f"{name}.yml", "--out", tmp_path / name, *extra)


def test_mixtral_from_llama_keeps_every_expert_byte_for_byte(sources, tmp_path):
    result = assemble(tmp_path, recipe(sources))
    assert result.returncode == 0, result.output
    assert "format mixtral" in result.flat, result.output
    out = load_state(tmp_path / "moe")
    experts = [load_state(sources[name]) for name, _, _ in EXPERTS]
    base = load_state(sources["base"])
    for layer in range(2):
        mlp = f"model.layers.{layer}.mlp"
        gate_up, down = out[f"{mlp}.experts.gate_up_proj"], out[f"{mlp}.experts.down_proj"]
        assert gate_up.shape == (3, 64, 16) and down.shape == (3, 16, 32)
        for e, state in enumerate(experts):
            assert torch.equal(gate_up[e], torch.cat([state[f"{mlp}.gate_proj.weight"], state[f"{mlp}.up_proj.weight"]]))
            assert torch.equal(down[e], state[f"{mlp}.down_proj.weight"])
    for name, tensor in base.items():  # attention, norms, embeddings: the base's
        if ".mlp." not in name:
            assert torch.equal(out[name], tensor), name
    assert model_class(tmp_path / "moe").__name__ == "MixtralForCausalLM"
    assert forward_pass(tmp_path / "moe").shape == (1, 4, 64)


def reference_tokens(directory: Path, prompts: list[str]) -> dict[str, torch.Tensor]:
    """mergekit-moe's tokenisation: BOS prepended by hand, left padding with the BOS token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    return tokenizer([tokenizer.bos_token + p for p in prompts], return_tensors="pt", padding=True,
                     add_special_tokens=False)


def reference_gates(sources: dict[str, Path], encode) -> torch.Tensor:
    """(layers, experts, hidden): positive minus negative, each layer's vector normalised."""
    vectors = []
    for _, positive, negative in EXPERTS:
        vector = encode(positive)
        if negative:
            vector = vector - encode(negative)
        vectors.append(vector / vector.norm(dim=-1, keepdim=True).clamp(min=1e-8))
    return torch.stack(vectors).permute(1, 0, 2)


def test_cheap_embed_gates_are_the_normalised_sum_of_prompt_embeddings(sources, tmp_path):
    result = assemble(tmp_path, recipe(sources, mode="cheap_embed"))
    assert result.returncode == 0, result.output
    embed = load_state(sources["base"])["model.embed_tokens.weight"].float()

    def encode(prompts: list[str]) -> torch.Tensor:
        batch = reference_tokens(sources["base"], prompts)
        onehot = torch.nn.functional.one_hot(batch["input_ids"], num_classes=embed.shape[0]).float()
        summed = ((onehot @ embed) * batch["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
        return (summed / summed.norm(dim=-1, keepdim=True)).repeat(2, 1)

    expected = reference_gates(sources, encode)
    out = load_state(tmp_path / "moe")
    for layer in range(2):
        torch.testing.assert_close(out[f"model.layers.{layer}.mlp.gate.weight"], expected[layer], rtol=1e-6, atol=1e-7)


def test_hidden_gates_are_the_last_positions_hidden_state_entering_each_layer(sources, tmp_path):
    from transformers import AutoModelForCausalLM

    result = assemble(tmp_path, recipe(sources, mode="hidden"))
    assert result.returncode == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(sources["base"], dtype=torch.bfloat16)

    def encode(prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            states = model(**reference_tokens(sources["base"], prompts), output_hidden_states=True).hidden_states
        return torch.stack([s[:, -1, :].float().mean(dim=0) for s in states[:-1]])  # input of each layer

    expected = reference_gates(sources, encode)
    out = load_state(tmp_path / "moe")
    for layer in range(2):
        torch.testing.assert_close(out[f"model.layers.{layer}.mlp.gate.weight"], expected[layer], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["random", "uniform_random"])
def test_random_gates_follow_the_seed(mode, sources, tmp_path):
    text = recipe(sources, mode=mode, experts=[(n, [], []) for n, _, _ in EXPERTS])
    first, again, other = (assemble(tmp_path, text, "--seed", seed, name=name)
                           for name, seed in (("one", "1"), ("again", "1"), ("two", "2")))
    assert first.returncode == again.returncode == other.returncode == 0, first.output + other.output
    gates = [load_state(tmp_path / n)["model.layers.0.mlp.gate.weight"] for n in ("one", "again", "two")]
    assert torch.equal(gates[0], gates[1]) and not torch.equal(gates[0], gates[2])
    if mode == "uniform_random":  # torch.nn.Linear's initialisation: U(-1/sqrt(hidden), 1/sqrt(hidden))
        assert gates[0].abs().max() <= 1 / math.sqrt(16)
    else:
        assert gates[0].abs().max() > 1 / math.sqrt(16)  # 48 standard normal draws exceed 0.25 somewhere


def test_identical_experts_routed_to_all_compute_the_dense_model(sources, tmp_path):
    same = [("a", [], []), ("a", [], []), ("a", [], [])]
    refused = assemble(tmp_path, recipe(sources, mode="random", per_token=3, experts=same), name="refused")
    assert refused.returncode == 1 and "every expert is the same model" in refused.flat, refused.output
    result = assemble(tmp_path, recipe(sources, mode="random", per_token=3, experts=same), "--allow-identical-experts",
                      "--seed", "5")
    assert result.returncode == 0, result.output
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 7, 9, 3]])
    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    dense = AutoModelForCausalLM.from_pretrained(sources["a"])
    with torch.no_grad():  # the a model's MLPs, attention from the base: build that dense model by hand
        for layer, block in enumerate(dense.model.layers):
            base_block = AutoModelForCausalLM.from_pretrained(sources["base"]).model.layers[layer]
            block.self_attn.load_state_dict(base_block.self_attn.state_dict())
            block.input_layernorm.load_state_dict(base_block.input_layernorm.state_dict())
            block.post_attention_layernorm.load_state_dict(base_block.post_attention_layernorm.state_dict())
        base = AutoModelForCausalLM.from_pretrained(sources["base"])
        dense.model.embed_tokens.load_state_dict(base.model.embed_tokens.state_dict())
        dense.model.norm.load_state_dict(base.model.norm.state_dict())
        dense.lm_head.load_state_dict(base.lm_head.state_dict())
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)


def test_mixtral_from_mistral(sources, tmp_path):
    text = recipe(sources, mode="random", experts=[("mistral", [], []), ("a", [], [])]).replace(
        str(sources["base"]), str(sources["mistral"]), 1)
    mixed = assemble(tmp_path, text, name="mixed")
    assert mixed.returncode == 1 and "needs Llama or Mistral sources, all of one family" in mixed.flat, mixed.output
    text = recipe({**sources, "base": sources["mistral"]}, mode="random", experts=[("mistral", [], []), ("mistral", [], [])])
    result = assemble(tmp_path, text, "--allow-identical-experts")
    assert result.returncode == 0, result.output
    assert model_class(tmp_path / "moe").__name__ == "MixtralForCausalLM"
    assert forward_pass(tmp_path / "moe").shape == (1, 4, 64)


@pytest.mark.parametrize("case", ["per-token", "no-prompts", "same-prompts", "architecture", "missing-model", "typo"])
def test_bad_moe_recipes_get_one_clear_error_and_leave_nothing(case, sources, tmp_path):
    text, expected, line = {
        "per-token": (recipe(sources, per_token=4), "experts_per_token is 4 but there are only 3 experts", 11),
        "no-prompts": (recipe(sources, experts=[("a", ["code"], []), ("b", [], [])]),
                       "expert 1 has no positive_prompts, which gate_mode 'hidden' routes by", 5),
        "same-prompts": (recipe(sources, experts=[("a", ["code"], []), ("b", ["code"], [])]),
                         "every expert has the same positive and negative prompts", 2),
        "architecture": (recipe(sources, extra="architecture: qwen3\n"),
                         "no MoE output format accepts these sources", None),
        "missing-model": (recipe({**sources, "b": Path("/nonexistent/b")}), "model directory not found: /nonexistent/b", 6),
        "typo": (recipe(sources).replace("gate_mode", "gate_mod"), "unknown key 'gate_mod' (did you mean 'gate_mode'?)", 10),
    }[case]
    result = assemble(tmp_path, text)
    assert result.returncode == 1, result.output
    assert expected in result.flat, result.output
    if line:
        assert f"moe.yml:{line}" in result.flat, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moe.yml"]  # nothing written, nothing half-written


def test_validate_and_plan_understand_moe_recipes(sources, tmp_path):
    (tmp_path / "moe.yml").write_text(recipe(sources, mode="cheap_embed"))
    checked = run_cli("validate", tmp_path / "moe.yml")
    assert checked.returncode == 0, checked.output
    assert "mixtral MoE of 3 experts (2 per token, gates from cheap_embed) → 2 layers, 21 tensors" in checked.flat
    import json

    planned = run_cli("plan", tmp_path / "moe.yml", "--json")
    assert planned.returncode == 0, planned.output
    figures = json.loads(planned.stdout)
    result = assemble(tmp_path, recipe(sources, mode="cheap_embed"), name="real")
    assert result.returncode == 0, result.output
    written = sum(p.stat().st_size for p in (tmp_path / "real").glob("*.safetensors"))
    assert figures["tensors"] == len(load_state(tmp_path / "real"))
    assert 0 < written - figures["write_bytes"] < 4096  # the file adds only its JSON header
    bad = run_cli("validate", write_bad(tmp_path, recipe(sources, per_token=5)))
    assert bad.returncode == 1 and "experts_per_token is 5" in bad.flat, bad.output


def write_bad(tmp_path: Path, text: str) -> Path:
    (tmp_path / "bad.yml").write_text(text)
    return tmp_path / "bad.yml"
