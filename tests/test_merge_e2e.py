"""End-to-end merges of tiny real checkpoints through the real CLI, loaded back with transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mergehub.testing import forward_pass, load_state, merge_ok, run_cli


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_linear_models_syntax_matches_weighted_mean(tmp_path, tiny_models):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cfg = write(tmp_path / "r.yaml", f"""
merge_method: linear
models:
  - {{model: {a}, parameters: {{weight: 0.25}}}}
  - {{model: {b}, parameters: {{weight: 0.5}}}}
""")
    merge_ok(cfg, tmp_path / "out")
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert set(out) == set(sa)  # untied: lm_head included
    for name, tensor in out.items():
        expected = (0.25 * sa[name].double() + 0.5 * sb[name].double()) / 0.75
        torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "out/config.json").read_text())["num_hidden_layers"] == 2
    assert (tmp_path / "out/README.md").read_text().count("linear") >= 1
    assert (tmp_path / "out/mergehub_config.yml").read_text() == cfg.read_text()
    forward_pass(tmp_path / "out")


def test_weights_one_zero_reproduce_first_model_exactly(tmp_path, tiny_models):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n"
                                     f"  - {{model: {b}, parameters: {{weight: 0}}}}\n")
    merge_ok(cfg, tmp_path / "out")
    out, sa = load_state(tmp_path / "out"), load_state(a)
    assert all(torch.equal(out[n], sa[n]) for n in sa)


def test_tied_llama_32_stays_tied(tmp_path, tiny_models):
    a, b = tiny_models("ta", layers=2, seed=3, tied=True), tiny_models("tb", layers=2, seed=4, tied=True)
    assert "lm_head.weight" not in load_state(a)
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {a}\n  - model: {b}\n")
    merge_ok(cfg, tmp_path / "out")
    out = load_state(tmp_path / "out")
    assert "lm_head.weight" not in out
    expected = (load_state(a)["model.embed_tokens.weight"] + load_state(b)["model.embed_tokens.weight"]) / 2
    torch.testing.assert_close(out["model.embed_tokens.weight"], expected, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "out/config.json").read_text())["tie_word_embeddings"] is True
    forward_pass(tmp_path / "out")


def test_tied_with_untied_uses_embedding_as_lm_head(tmp_path, tiny_models):
    tied, untied = tiny_models("ta", layers=2, seed=3, tied=True), tiny_models("ua", layers=2, seed=5)
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nparameters: {{weight: 1}}\nbase_model: {tied}\n"
                                     f"models:\n  - model: {tied}\n  - model: {untied}\n")
    merge_ok(cfg, tmp_path / "out")
    out, st, su = load_state(tmp_path / "out"), load_state(tied), load_state(untied)
    expected = (st["model.embed_tokens.weight"] + su["lm_head.weight"]) / 2
    torch.testing.assert_close(out["lm_head.weight"], expected, rtol=0, atol=1e-6)
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["tie_word_embeddings"] is False  # donor was tied, but the output has its own lm_head
    logits = forward_pass(tmp_path / "out")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(model.lm_head.weight.detach(), expected)  # transformers really uses it
    assert logits.shape[-1] == 64


def test_mistral_merge_loads(tmp_path, tiny_models):
    a, b = tiny_models("ma", arch="mistral", seed=6), tiny_models("mb", arch="mistral", seed=7)
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 2}}}}\n"
                                     f"  - {{model: {b}, parameters: {{weight: 1}}}}\ndtype: bf16\n")
    merge_ok(cfg, tmp_path / "out")
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    name = "model.layers.1.mlp.down_proj.weight"
    expected = ((2 * sa[name].bfloat16().float() + sb[name].bfloat16().float()) / 3).bfloat16()
    assert out[name].dtype == torch.bfloat16 and torch.equal(out[name], expected)
    assert json.loads((tmp_path / "out/config.json").read_text())["dtype"] == "bfloat16"
    forward_pass(tmp_path / "out")


def test_depth_upscaling_passthrough_is_byte_equal(tmp_path, tiny_models):
    a, b = tiny_models("a8", layers=8, seed=8), tiny_models("b8", layers=8, seed=9)
    cfg = write(tmp_path / "r.yaml", f"""
merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 6]}}]
  - sources: [{{model: {b}, layer_range: [2, 8]}}]
""")
    merge_ok(cfg, tmp_path / "out")
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert json.loads((tmp_path / "out/config.json").read_text())["num_hidden_layers"] == 12
    for k in range(12):
        src, layer = (sa, k) if k < 6 else (sb, k - 6 + 2)
        for suffix in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{k}.{suffix}"], src[f"model.layers.{layer}.{suffix}"])
    assert torch.equal(out["model.embed_tokens.weight"], sa["model.embed_tokens.weight"])  # first slice
    assert torch.equal(out["model.norm.weight"], sb["model.norm.weight"])  # last slice
    assert torch.equal(out["lm_head.weight"], sb["lm_head.weight"])
    assert forward_pass(tmp_path / "out").shape == (1, 4, 64)


def test_solar_gradient_recipe(tmp_path, tiny_models):
    a, b = tiny_models("a8", layers=8, seed=8), tiny_models("b8", layers=8, seed=9)
    cfg = write(tmp_path / "r.yaml", f"""
slices:
  - sources: [{{model: {a}, layer_range: [0, 2], parameters: {{weight: 1}}}}]
  - sources:
      - {{model: {a}, layer_range: [2, 8], parameters: {{weight: [1, 0]}}}}
      - {{model: {b}, layer_range: [0, 6], parameters: {{weight: [0, 1]}}}}
  - sources: [{{model: {b}, layer_range: [6, 8], parameters: {{weight: 1}}}}]
merge_method: linear
dtype: bfloat16
""")
    merge_ok(cfg, tmp_path / "out")
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert json.loads((tmp_path / "out/config.json").read_text())["num_hidden_layers"] == 10
    weight_of_a = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]  # k / 5 for k = 0..5, written out by hand
    name = "self_attn.v_proj.weight"
    for k, wa in enumerate(weight_of_a):
        x = sa[f"model.layers.{2 + k}.{name}"].bfloat16().float()
        y = sb[f"model.layers.{k}.{name}"].bfloat16().float()
        expected = ((wa * x + (1 - wa) * y) / 1.0).bfloat16()
        assert torch.equal(out[f"model.layers.{2 + k}.{name}"], expected), k
    assert torch.equal(out[f"model.layers.0.{name}"], sa[f"model.layers.0.{name}"].bfloat16())
    assert torch.equal(out[f"model.layers.9.{name}"], sb[f"model.layers.7.{name}"].bfloat16())
    forward_pass(tmp_path / "out")


def test_shards_and_index(tmp_path, tiny_models):
    a = tiny_models("a8", layers=8, seed=8)
    cfg = write(tmp_path / "r.yaml", f"merge_method: passthrough\nmodels:\n  - model: {a}\n")
    merge_ok(cfg, tmp_path / "out", "--shard-size", "20K")
    index = json.loads((tmp_path / "out/model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert all((tmp_path / "out" / f).stat().st_size <= 20_000 + 4096 for f in files)
    assert set(index["weight_map"]) == set(load_state(a))
    assert not (tmp_path / "out/model.safetensors").exists()
    sa, out = load_state(a), load_state(tmp_path / "out")
    assert all(torch.equal(out[n], sa[n]) for n in sa)
    forward_pass(tmp_path / "out")


def test_out_dtype_and_sharded_input(tmp_path, tiny_models):
    a = tiny_models("a8", layers=8, seed=8)
    sharded = tmp_path / "sharded"
    merge_ok(write(tmp_path / "s.yaml", f"merge_method: passthrough\nmodels:\n  - model: {a}\n"), sharded, "--shard-size", "30K")
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nmodels:\n  - {{model: {sharded}, parameters: {{weight: 1}}}}\n"
                                     f"  - {{model: {a}, parameters: {{weight: 1}}}}\ndtype: float32\nout_dtype: float16\n")
    merge_ok(cfg, tmp_path / "out")
    out, sa = load_state(tmp_path / "out"), load_state(a)
    assert all(t.dtype == torch.float16 for t in out.values())
    assert all(torch.equal(out[n], sa[n].half()) for n in sa)
    assert json.loads((tmp_path / "out/config.json").read_text())["dtype"] == "float16"


@pytest.mark.parametrize("disabled, said", [
    ("mergehub-arch-llama,mergehub-arch-transformers", "inferred 2 layers"),
    ("mergehub-arch-llama", None),  # transformers' own Llama: derived, no warning
])
def test_without_a_definition_the_layout_is_derived_or_inferred(tmp_path, tiny_models, disabled, said):
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {a}\n  - model: {b}\n")
    result = run_cli("merge", cfg, "--out", tmp_path / "out", env={"MERGEHUB_DISABLE_PLUGINS": disabled})
    assert result.returncode == 0, result.output
    assert (said in result.output and "LlamaForCausalLM" in result.output) if said else "inferred" not in result.output
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert set(out) == set(sa)
    assert all(torch.allclose(out[n], (sa[n] + sb[n]) / 2, atol=1e-6) for n in sa)
    forward_pass(tmp_path / "out")


@pytest.mark.parametrize("disabled", ["mergehub-arch-llama,mergehub-arch-transformers", "mergehub-arch-llama"])
def test_slices_take_the_final_tensors_from_the_last_slice_without_a_definition(tmp_path, tiny_models, disabled):
    """Inferred and derived layouts alike: embeddings from the first slice's model, norm and lm_head from the last's."""
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cfg = write(tmp_path / "r.yaml", f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
                                     f"  - sources: [{{model: {b}, layer_range: [1, 2]}}]\n")
    result = run_cli("merge", cfg, "--out", tmp_path / "out", env={"MERGEHUB_DISABLE_PLUGINS": disabled})
    assert result.returncode == 0, result.output
    out, sa, sb = load_state(tmp_path / "out"), load_state(a), load_state(b)
    assert torch.equal(out["model.embed_tokens.weight"], sa["model.embed_tokens.weight"])
    for name in ("model.norm.weight", "lm_head.weight"):
        assert torch.equal(out[name], sb[name]), name
    assert torch.equal(out["model.layers.2.mlp.up_proj.weight"], sb["model.layers.1.mlp.up_proj.weight"])
    forward_pass(tmp_path / "out")


def test_tokenizer_and_generation_config_come_from_base(tmp_path):
    root = Path(__file__).parents[1] / "examples" / "models"
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nparameters: {{weight: 1}}\nbase_model: {root / 'llama-b'}\n"
                                     f"models:\n  - model: {root / 'llama-a'}\n")
    merge_ok(cfg, tmp_path / "out")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (root / "llama-b" / name).read_bytes()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "out")("w5 w7")["input_ids"][-2:] == [5, 7]


def test_layer_range_error_leaves_no_output(tmp_path, tiny_models):
    a = tiny_models("a", layers=2, seed=1)
    cfg = write(tmp_path / "r.yaml", f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 3]}}]\n")
    result = run_cli("merge", cfg, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.output
    assert "has 2 layers" in result.output and "r.yaml:3" in result.output
    assert list(tmp_path.iterdir()) == [cfg]


@pytest.mark.parametrize("example", ["quickstart", "depth-upscale", "gradient", "mega"])
def test_examples_merge_and_load(tmp_path, example):
    repo = Path(__file__).parents[1]
    result = run_cli("merge", repo / "examples" / f"{example}.yaml", "--out", tmp_path / "out", cwd=repo)
    assert result.returncode == 0, result.output
    assert forward_pass(tmp_path / "out").shape[-1] == 128


def test_chat_template_literal_is_used_by_transformers(tmp_path):
    root = Path(__file__).parents[1] / "examples" / "models"
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nparameters: {{weight: 1}}\n"
                                     f"models:\n  - model: {root / 'llama-a'}\n  - model: {root / 'llama-b'}\n"
                                     f"chat_template: {json.dumps(template)}\n")
    merge_ok(cfg, tmp_path / "out")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "w5 w6"}], tokenize=False)
    assert text == "[user] w5 w6\n"


def test_chat_template_auto_takes_the_most_common(tmp_path):
    root = Path(__file__).parents[1] / "examples" / "models"
    models = []
    for name, template in (("x", "{{ 'one' }}"), ("y", "{{ 'two' }}"), ("z", "{{ 'two' }}")):
        shutil.copytree(root / "llama-a", tmp_path / name)
        (tmp_path / name / "chat_template.jinja").write_text(template)
        models.append(tmp_path / name)
    cfg = write(tmp_path / "r.yaml", "merge_method: linear\nparameters: {weight: 1}\nmodels:\n"
                + "".join(f"  - model: {m}\n" for m in models) + "chat_template: auto\n")
    merge_ok(cfg, tmp_path / "out")
    assert (tmp_path / "out/chat_template.jinja").read_text() == "{{ 'two' }}"


def test_device_option_runs_the_maths_there_and_rejects_a_missing_device(tmp_path, tiny_models):
    """``--device cpu`` gives the default's bytes; a device the machine lacks is one clear error, nothing written."""
    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    cfg = write(tmp_path / "r.yaml", f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
                                     "parameters: {t: 0.3}\n")
    merge_ok(cfg, tmp_path / "default")
    merge_ok(cfg, tmp_path / "cpu", "--device", "cpu")
    default, cpu = load_state(tmp_path / "default"), load_state(tmp_path / "cpu")
    assert set(default) == set(cpu) and all(torch.equal(default[n], cpu[n]) for n in default)
    missing = "cuda" if not torch.cuda.is_available() else "cuda:999"
    result = run_cli("merge", cfg, "--out", tmp_path / "gpu", "--device", missing)
    assert result.returncode != 0 and f"cannot use device '{missing}'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "gpu").exists()
