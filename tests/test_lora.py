"""LoRA inputs (``model: base+adapter``) through the real CLI, checked against PEFT's own merge_and_unload().

Adapters are made by PEFT itself on tiny real Llamas (``init_lora_weights=False``, so B is not zero),
except where PEFT cannot make one (fan_in_fan_out on a Llama): those are written by hand and checked
against the maths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from mergehub.testing import forward_pass, load_state, populate_hub_cache, run_cli
from safetensors.torch import load_file, save_file

PREFIX = "base_model.model."


def make_adapter(base: Path, out: Path, seed: int = 0, dtype: torch.dtype = torch.float32, edit: Any = None,
                 **settings: Any) -> Path:
    """Save a PEFT LoRA adapter of ``base`` with random (non-zero) A and B; ``edit(peft_model)`` may change it first."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=dtype),
                           LoraConfig(init_lora_weights=False, **settings))
    if edit:
        edit(model)
    model.save_pretrained(out)
    return out


def peft_merged(base: Path, adapter: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """What PEFT makes of base + adapter: PeftModel.from_pretrained(...).merge_and_unload()'s state dict."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), adapter)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def merge(tmp_path: Path, recipe: str, *extra: str, name: str = "out", env: dict[str, str] | None = None) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(recipe)
    result = run_cli("merge", cfg, "--out", tmp_path / name, *extra, env=env)
    assert result.returncode == 0, result.output
    return tmp_path / name


def passthrough(model: str) -> str:
    return f"merge_method: passthrough\nmodels:\n  - model: {model}\n"


def changed(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> set[str]:
    return {n for n in base if not torch.equal(state[n], base[n])}


def layers(*names: str) -> set[str]:
    return {f"model.layers.{i}.{n}.weight" for i in range(2) for n in names}


def perturb_lm_head(model: Any) -> None:
    """A trained modules_to_save copy differs from the base: make the saved lm_head do so."""
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.5)


def perturb_embeddings(model: Any) -> None:
    """PEFT saves an adapted embedding's own weights too (new tokens may be trained): make them differ."""
    with torch.no_grad():
        model.base_model.model.model.embed_tokens.base_layer.weight[-5:].add_(0.5)


CASES = {
    "q_v": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
            layers("self_attn.q_proj", "self_attn.v_proj")),
    "rslora": (dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "k_proj", "o_proj"]),
               layers("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj")),
    "patterns": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                      rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 3},
                      alpha_pattern={"proj": 7, "layers.1.self_attn.q_proj": 3, "down_proj": 5}),
                 layers("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")),
    "layers_to_transform": (dict(r=2, lora_alpha=4, target_modules=["q_proj", "gate_proj"], layers_to_transform=[1]),
                            {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.gate_proj.weight"}),
    "embedding": (dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], edit=perturb_embeddings),
                  layers("self_attn.q_proj") | {"model.embed_tokens.weight"}),
    # factors of modules the (edited) config no longer targets are ignored, as PEFT ignores them
    "edited_targets": (dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                            config={"target_modules": ["q_proj"], "layers_to_transform": [1]}),
                       {"model.layers.1.self_attn.q_proj.weight"}),
    "modules_to_save": (dict(r=4, lora_alpha=8, target_modules=["v_proj"], modules_to_save=["lm_head"],
                             edit=perturb_lm_head),
                        layers("self_attn.v_proj") | {"lm_head.weight"}),
}


@pytest.mark.parametrize("case", CASES)
def test_lora_input_matches_peft_merge_and_unload(case: str, tmp_path: Path, tiny_models: Any) -> None:
    settings, expected_changes = CASES[case]
    base = tiny_models("a", seed=1)
    settings = dict(settings)
    config_changes = settings.pop("config", {})
    adapter = edit_config(make_adapter(base, tmp_path / "adapter", seed=2, **settings), **config_changes)

    out = merge(tmp_path, passthrough(f"{base}+{adapter}"))

    merged, reference, original = load_state(out), peft_merged(base, adapter), load_state(base)
    assert set(merged) == set(reference) == set(original)
    assert changed(reference, original) == expected_changes  # the adapter really changes these, and only these
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=0, atol=1e-6, msg=name)
    forward_pass(out)


def test_bfloat16_base_is_rounded_as_peft_rounds_it(tmp_path: Path, tiny_models: Any) -> None:
    """Linear deltas are added in float32 and rounded once; embedding deltas are rounded to bfloat16 first."""
    base = tiny_models("bf", seed=3, dtype="bfloat16")
    adapter = make_adapter(base, tmp_path / "adapter", seed=4, dtype=torch.bfloat16, r=4, lora_alpha=8,
                           target_modules=["embed_tokens", "q_proj", "v_proj"])

    out = merge(tmp_path, passthrough(f"{base}+{adapter}"))

    merged, reference = load_state(out), peft_merged(base, adapter, dtype=torch.bfloat16)
    assert changed(reference, load_state(base)) == layers("self_attn.q_proj", "self_attn.v_proj") | {"model.embed_tokens.weight"}
    for name in reference:
        assert merged[name].dtype == torch.bfloat16
        assert torch.equal(merged[name], reference[name]), name


def test_adapter_is_applied_in_the_recipe_dtype(tmp_path: Path, tiny_models: Any) -> None:
    """``dtype: float32`` over a bfloat16 checkpoint is PEFT on the base loaded in float32, not a bfloat16 merge upcast.

    Linear and embedding deltas are added to the upcast weights in float32 and never rounded to bfloat16; the
    modules_to_save copy (saved in float32) keeps its float32 values.
    """
    base = tiny_models("bf", seed=3, dtype="bfloat16")
    adapter = make_adapter(base, tmp_path / "adapter", seed=13, r=4, lora_alpha=8, modules_to_save=["lm_head"],
                           target_modules=["embed_tokens", "q_proj", "v_proj"], edit=perturb_lm_head)

    out = merge(tmp_path, "dtype: float32\n" + passthrough(f"{base}+{adapter}"))

    merged, reference = load_state(out), peft_merged(base, adapter, dtype=torch.float32)
    in_bf16 = peft_merged(base, adapter, dtype=torch.bfloat16)  # the adapter applied in the checkpoint's dtype
    adapted = layers("self_attn.q_proj", "self_attn.v_proj") | {"model.embed_tokens.weight", "lm_head.weight"}
    assert changed(reference, {n: t.float() for n, t in load_state(base).items()}) == adapted
    for name in reference:
        assert merged[name].dtype == torch.float32, name
        torch.testing.assert_close(merged[name], reference[name], rtol=0, atol=1e-6, msg=name)
    # merging in bfloat16 and then casting is measurably farther from PEFT's float32 merge, in every adapted tensor
    for name in adapted:
        assert (in_bf16[name].float() - reference[name]).abs().max() > 1e-4, name


def test_adapter_on_a_wider_base_is_applied_in_the_lower_recipe_dtype(tmp_path: Path, tiny_models: Any) -> None:
    """``dtype: bfloat16`` over a float32 checkpoint: PEFT on the base loaded in bfloat16, bit for bit."""
    base = tiny_models("a", seed=1)
    adapter = make_adapter(base, tmp_path / "adapter", seed=14, r=4, lora_alpha=8,
                           target_modules=["embed_tokens", "q_proj", "v_proj"])

    out = merge(tmp_path, "dtype: bfloat16\n" + passthrough(f"{base}+{adapter}"))

    merged, reference = load_state(out), peft_merged(base, adapter, dtype=torch.bfloat16)
    for name in reference:
        assert merged[name].dtype == torch.bfloat16
        assert torch.equal(merged[name], reference[name]), name


def test_trained_biases_saved_with_the_adapter_replace_the_base_biases(tmp_path: Path) -> None:
    """``bias: all`` saves every bias (trained with the adapter); PEFT loads them over the base's."""
    import transformers

    torch.manual_seed(11)
    config = transformers.Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=64, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    base = tmp_path / "qwen2"
    transformers.Qwen2ForCausalLM(config).save_pretrained(base)  # q/k/v projections have biases

    def train_biases(model: Any) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.add_(torch.randn_like(param))

    adapter = make_adapter(base, tmp_path / "adapter", seed=12, r=4, lora_alpha=8, target_modules=["q_proj"],
                           bias="all", edit=train_biases)

    out = merge(tmp_path, passthrough(f"{base}+{adapter}"))

    merged, reference = load_state(out), peft_merged(base, adapter)
    biases = {f"model.layers.{i}.self_attn.{p}.bias" for i in range(2) for p in ("q_proj", "k_proj", "v_proj")}
    assert changed(reference, load_state(base)) == biases | layers("self_attn.q_proj")
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=0, atol=1e-6, msg=name)
    forward_pass(out)


def handmade_adapter(directory: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], fmt: str) -> Path:
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    state = {PREFIX + k: v.contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        save_file(state, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, directory / "adapter_model.bin")
    return directory


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_fan_in_fan_out_adapter_adds_the_transposed_product(fmt: str, tmp_path: Path, tiny_models: Any) -> None:
    base = tiny_models("a", seed=1)
    original = load_state(base)
    g = torch.Generator().manual_seed(5)
    k = "model.layers.0.self_attn.k_proj"  # W is (8, 16): fan_in_fan_out reads it as Conv1D's (in, out)
    a, b = torch.randn(2, 8, generator=g), torch.randn(16, 2, generator=g)
    adapter = handmade_adapter(tmp_path / "adapter", {"r": 2, "lora_alpha": 3, "fan_in_fan_out": True,
                                                      "target_modules": ["k_proj"]},
                               {f"{k}.lora_A.weight": a, f"{k}.lora_B.weight": b}, fmt)

    out = merge(tmp_path, passthrough(f"{base}+{adapter}"))

    merged = load_state(out)
    expected = original[f"{k}.weight"].double() + 1.5 * (b.double() @ a.double()).T
    torch.testing.assert_close(merged[f"{k}.weight"].double(), expected, rtol=0, atol=1e-6)
    assert changed(merged, original) == {f"{k}.weight"}
    forward_pass(out)


def test_lora_input_in_a_linear_merge_with_a_plain_model(tmp_path: Path, tiny_models: Any) -> None:
    base, other = tiny_models("a", seed=1), tiny_models("b", seed=2)
    adapter = make_adapter(base, tmp_path / "adapter", seed=6, r=4, lora_alpha=16, target_modules=["q_proj", "up_proj"])

    out = merge(tmp_path, f"merge_method: linear\ndtype: float32\nmodels:\n"
                          f"  - {{model: {base}+{adapter}, parameters: {{weight: 0.7}}}}\n"
                          f"  - {{model: {other}, parameters: {{weight: 0.3}}}}\n")

    merged, sa, sb = load_state(out), load_state(base), load_state(other)
    factors = load_file(adapter / "adapter_model.safetensors")
    for name in sa:
        x = sa[name].double()
        module = name.removesuffix(".weight")
        if f"{PREFIX}{module}.lora_A.weight" in factors:
            a, b = (factors[f"{PREFIX}{module}.lora_{f}.weight"].double() for f in "AB")
            x = x + (16 / 4) * (b @ a)
        torch.testing.assert_close(merged[name].double(), 0.7 * x + 0.3 * sb[name].double(), rtol=0, atol=1e-6, msg=name)
    forward_pass(out)


@pytest.fixture
def wide_lora(tmp_path: Path, tiny_models: Any) -> tuple[Path, Path]:
    """A model whose embeddings (200 rows) and layers (80-160 rows) span several delta chunks, and its adapter."""
    base = tiny_models("wide", seed=7, vocab=200, hidden=80)
    adapter = make_adapter(base, tmp_path / "adapter", seed=8, r=4, lora_alpha=8, modules_to_save=["lm_head"],
                           target_modules=["embed_tokens", "q_proj", "gate_proj", "down_proj"], edit=perturb_lm_head)
    return base, adapter


def test_row_blocks_give_the_same_bytes_as_whole_reads(wide_lora: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = wide_lora
    recipe = f"merge_method: linear\nmodels:\n  - {{model: {base}+{adapter}, parameters: {{weight: 1}}}}\n"

    whole = load_state(merge(tmp_path, recipe, "--max-memory", "64MiB", name="whole"))
    blocks = load_state(merge(tmp_path, recipe, "--max-memory", "2KiB", name="blocks"))

    assert all(torch.equal(blocks[n], whole[n]) for n in whole)
    reference = peft_merged(base, adapter)
    for name in reference:
        torch.testing.assert_close(whole[name], reference[name], rtol=0, atol=1e-6, msg=name)


def test_reader_rows_equal_the_whole_tensor(wide_lora: tuple[Path, Path], fresh_registry: Any) -> None:
    """Any row block, one-row blocks and blocks across chunk edges included, is that slice of the whole read."""
    from mergehub.models.loader import load_model
    from mergehub.recipe.config import ModelRef

    base, adapter = wide_lora
    info = load_model(ModelRef.parse(f"{base}+{adapter}"), fresh_registry)
    try:
        reader = info.reader
        for name in reader.tensor_names():
            whole = reader.read(name)
            rows = whole.shape[0]
            cuts = sorted({0, 1, 2, 63, 64, 65, 127, 129, rows - 1, rows} & set(range(rows + 1)))
            assert torch.equal(torch.cat([reader.read_rows(name, lo, hi) for lo, hi in zip(cuts, cuts[1:])]), whole), name
    finally:
        info.close()


def edit_config(adapter: Path, **changes: Any) -> Path:
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return adapter


def assert_refused(tmp_path: Path, model: str, *needles: str) -> None:
    cfg = tmp_path / "r.yaml"
    cfg.write_text(passthrough(model))
    result = run_cli("merge", cfg, "--out", tmp_path / "out")
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    for needle in needles:
        assert needle in result.output, result.output


def test_dora_adapter_is_refused(tmp_path: Path, tiny_models: Any) -> None:
    base = tiny_models("a", seed=1)
    adapter = make_adapter(base, tmp_path / "dora", r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    assert_refused(tmp_path, f"{base}+{adapter}", str(adapter), "use_dora", "DoRA", "merge_and_unload")


@pytest.mark.parametrize(("changes", "needle"), [
    ({"peft_type": "LOHA"}, "peft_type is 'LOHA'"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights: 'pissa'"),
    ({"lora_bias": True}, "lora_bias"),
    ({"r": 2}, "gives rank 2"),
    ({"target_modules": ["k_proj"]}, "it changes nothing"),
], ids=["loha", "pissa", "lora_bias", "wrong_rank", "no_target"])
def test_unsupported_adapter_settings_are_refused(changes: dict[str, Any], needle: str, tmp_path: Path,
                                                  tiny_models: Any) -> None:
    base = tiny_models("a", seed=1)
    adapter = edit_config(make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"]), **changes)
    assert_refused(tmp_path, f"{base}+{adapter}", str(adapter), needle)


def test_adapter_for_a_tensor_the_base_lacks_is_refused(tmp_path: Path, tiny_models: Any) -> None:
    deeper, base = tiny_models("deep", seed=1, layers=3), tiny_models("a", seed=1)
    adapter = make_adapter(deeper, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj"])
    assert_refused(tmp_path, f"{base}+{adapter}", "model.layers.2.self_attn.q_proj.lora_A.weight",
                   "model.layers.2.self_attn.q_proj.weight")


def test_a_directory_without_adapter_config_is_refused(tmp_path: Path, tiny_models: Any) -> None:
    base, other = tiny_models("a", seed=1), tiny_models("b", seed=2)
    assert_refused(tmp_path, f"{base}+{other}", "has no adapter_config.json", str(other))


def test_hub_adapter_with_revision_resolves_offline_from_the_cache(tmp_path: Path, tiny_models: Any) -> None:
    base = tiny_models("a", seed=1)
    adapter = make_adapter(base, tmp_path / "adapter", seed=9, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "tiny-org/base", base)
    populate_hub_cache(cache, "tiny-org/lora", adapter, revision="v1")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    out = merge(tmp_path, "merge_method: passthrough\nmodels:\n"
                          "  - model: {model: {path: tiny-org/base}, lora: {path: tiny-org/lora, revision: v1}}\n", env=env)

    merged, reference = load_state(out), peft_merged(base, adapter)
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=0, atol=1e-6, msg=name)
    assert "tiny-org/lora" in (out / "README.md").read_text()
    missing = run_cli("validate", tmp_path / "out.yaml", env={**env, "HF_HUB_CACHE": str(tmp_path / "empty")})
    assert missing.returncode == 1 and "Traceback" not in missing.output


def test_bin_only_hub_model_with_bin_adapter_resolves_offline(tmp_path: Path, tiny_models: Any) -> None:
    pytest.importorskip("mergehub_io_pytorch")
    base = tiny_models("a", seed=1)
    adapter = make_adapter(base, tmp_path / "adapter", seed=10, r=4, lora_alpha=8, target_modules=["o_proj"])
    bin_base, bin_adapter = tmp_path / "bin-base", tmp_path / "bin-adapter"
    bin_base.mkdir()
    shutil.copy(base / "config.json", bin_base)
    torch.save(load_state(base), bin_base / "pytorch_model.bin")
    bin_adapter.mkdir()
    shutil.copy(adapter / "adapter_config.json", bin_adapter)
    torch.save(load_file(adapter / "adapter_model.safetensors"), bin_adapter / "adapter_model.bin")
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "tiny-org/bin-base", bin_base)
    populate_hub_cache(cache, "tiny-org/bin-lora", bin_adapter)

    out = merge(tmp_path, passthrough("tiny-org/bin-base+tiny-org/bin-lora"),
                env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})

    merged, reference = load_state(out), peft_merged(base, adapter)
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=0, atol=1e-6, msg=name)
