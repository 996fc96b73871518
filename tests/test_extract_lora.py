"""``mergehub extract-lora`` through the real CLI, checked with PEFT, torch.linalg.svd and mergehub's own LoRA input.

Fine-tunes are tiny real Llamas (and a Qwen2, for biases) with known deltas added: a random rank-3 LoRA on
every matrix (recovered exactly at rank ≥ 3), or a full-rank random delta (where each rank's error must be the
Eckart–Young optimum).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from mergehub.testing import load_state, populate_hub_cache, run_cli
from safetensors.torch import load_file, save_file

PREFIX = "base_model.model."
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")


def make_finetune(base: Path, out: Path, rank: int | None, seed: int, norms: bool = True) -> Path:
    """``base`` plus a random delta on every matrix: ``B A`` of ``rank`` (None: full rank) and, with ``norms``,
    noise on every 1-D tensor."""
    shutil.copytree(base, out)
    state = load_file(base / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if tensor.ndim == 2:
            rows, cols = tensor.shape
            if rank is None:
                delta = torch.randn(rows, cols, generator=generator) * 0.02
            else:
                delta = torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator) * 0.02
            state[name] = (tensor.float() + delta).to(tensor.dtype)
        elif norms:
            state[name] = (tensor.float() + torch.randn(tensor.shape, generator=generator) * 0.01).to(tensor.dtype)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_models: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extract")
    base = tiny_models("xbase", seed=21, hidden=32, vocab=64)
    tied = tiny_models("xtied", seed=22, hidden=32, vocab=64, tied=True)
    return {"base": base, "tied": tied,
            "lowrank": make_finetune(base, root / "lowrank", 3, seed=1),
            "tied_lowrank": make_finetune(tied, root / "tied_lowrank", 3, seed=2),
            "fullrank": make_finetune(base, root / "fullrank", None, seed=3),
            "attention_only": make_finetune(base, root / "attention_only", 3, seed=4, norms=False)}


def extract(finetune: Path, base: Path, out: Path, *options: str) -> dict[str, Any]:
    result = run_cli("extract-lora", "--model", finetune, "--base", base, "--out", out, "--json", *options)
    assert result.returncode == 0, result.output
    return json.loads(result.stdout)


def peft_model(base: Path, adapter: Path) -> Any:
    """What PEFT makes of base + adapter: PeftModel.from_pretrained(...).merge_and_unload()."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()


def state_of(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([[1, 5, 7, 9, 11]])).logits


def rows(report: dict[str, Any], how: str | None = None) -> dict[str, dict[str, Any]]:
    return {r["module"]: r for r in report["modules"] if how is None or r["how"] == how}


@pytest.mark.parametrize(("finetune", "base", "embed_lora"), [
    ("lowrank", "base", False), ("lowrank", "base", True), ("tied_lowrank", "tied", False),
    ("tied_lowrank", "tied", True)], ids=["untied", "untied-embed-lora", "tied", "tied-embed-lora"])
def test_a_known_lora_is_recovered_exactly(tmp_path: Path, models: dict[str, Path], finetune: str, base: str,
                                           embed_lora: bool) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    report = extract(models[finetune], models[base], out, "--rank", "4", *(["--embed-lora"] if embed_lora else []))

    merged, expected = peft_model(models[base], out), AutoModelForCausalLM.from_pretrained(models[finetune])
    reference = state_of(expected)
    assert set(state_of(merged)) >= set(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(state_of(merged)[name], tensor, rtol=0, atol=2e-6, msg=name)
    torch.testing.assert_close(logits(merged), logits(expected), rtol=0, atol=1e-4)
    factorised = rows(report, "lora") | rows(report, "embedding")
    assert all(r["rank"] == 4 and r["error"] < 1e-5 for r in factorised.values()), factorised
    tensors = load_file(out / "adapter_model.safetensors")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 4 and config["rank_pattern"] == {} and config["peft_type"] == "LORA"
    if embed_lora:
        assert tensors[f"{PREFIX}model.embed_tokens.lora_embedding_A"].shape == (4, 64)
        assert tensors[f"{PREFIX}model.embed_tokens.lora_embedding_B"].shape == (32, 4)
        assert set(config["target_modules"]) == set(LINEAR) | {"embed_tokens"} | (set() if base == "tied" else {"lm_head"})
        assert config["modules_to_save"] == ["input_layernorm", "post_attention_layernorm", "norm"]
        # a head tied in both models has no factors of its own: PEFT would add them to the shared weight again
        assert (f"{PREFIX}lm_head.lora_A.weight" in tensors) == (base != "tied")
    else:
        assert tensors[f"{PREFIX}model.embed_tokens.weight"].shape == (64, 32)
        assert f"{PREFIX}lm_head.weight" in tensors  # the tied head too: PEFT replaces the embedding only
        assert set(config["target_modules"]) == set(LINEAR)
        assert config["modules_to_save"] == ["embed_tokens", "input_layernorm", "post_attention_layernorm", "norm",
                                             "lm_head"]
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and str(models[finetune]) in card and "mergehub extract-lora --model" in card
    assert "| `model.layers.1.mlp.down_proj` | LoRA | 4 |" in card


def _deltas(finetune: Path, base: Path) -> dict[str, torch.Tensor]:
    ft, bs = load_file(finetune / "model.safetensors"), load_file(base / "model.safetensors")
    return {n.removesuffix(".weight"): (ft[n] - bs[n]).double() for n in ft if ft[n].ndim == 2}


def test_each_rank_gives_the_eckart_young_error(tmp_path: Path, models: dict[str, Path]) -> None:
    deltas = _deltas(models["fullrank"], models["base"])
    singular = {m: torch.linalg.svdvals(d) for m, d in deltas.items()}
    for rank in (1, 5, 16):
        out = tmp_path / f"r{rank}"
        report = extract(models["fullrank"], models["base"], out, "--rank", str(rank))
        factors = load_file(out / "adapter_model.safetensors")
        lora = rows(report, "lora")
        assert set(lora) == {m for m in deltas if "layers" in m}
        for module, row in lora.items():
            sigma = singular[module]
            kept = min(rank, sigma.numel())
            optimum = (sigma[kept:].square().sum() / sigma.square().sum()).sqrt().item()
            assert row["rank"] == kept
            assert row["error"] == pytest.approx(optimum, abs=2e-6), module
            b, a = factors[f"{PREFIX}{module}.lora_B.weight"].double(), factors[f"{PREFIX}{module}.lora_A.weight"].double()
            measured = ((deltas[module] - b @ a).norm() / deltas[module].norm()).item()
            assert measured == pytest.approx(row["error"], abs=1e-6), module
        pattern = json.loads((out / "adapter_config.json").read_text())["rank_pattern"]
        assert pattern == {m: r["rank"] for m, r in lora.items() if r["rank"] != report["r"]}


def test_rank_by_energy_picks_the_smallest_rank_keeping_that_share(tmp_path: Path, models: dict[str, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "energy"
    report = extract(models["fullrank"], models["base"], out, "--rank-by", "energy:0.8", "--rank", "12")
    for module, delta in _deltas(models["fullrank"], models["base"]).items():
        if module not in rows(report, "lora"):
            continue
        share = torch.linalg.svdvals(delta).square().cumsum(0)
        share = share / share[-1]
        expected = min(12, int((share < 0.8).sum()) + 1)
        assert rows(report)[module]["rank"] == expected, module
        assert rows(report)[module]["error"] <= (1 - 0.8) ** 0.5 + 1e-6 or expected == 12
    ranks = {r["rank"] for r in rows(report, "lora").values()}
    assert len(ranks) > 1, ranks  # the modules really differ, so rank_pattern matters
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == max(ranks) == report["r"]
    assert config["rank_pattern"] == config["alpha_pattern"] == {
        m: r["rank"] for m, r in rows(report, "lora").items() if r["rank"] != max(ranks)}
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models["base"]), out)  # every factor fits its rank


def test_modules_left_at_rank_0_are_left_out(tmp_path: Path, models: dict[str, Path]) -> None:
    """Only one matrix changed: with --rank-by every other module keeps no singular value, so PEFT never sees it."""
    finetune = tmp_path / "one"
    shutil.copytree(models["base"], finetune)
    state = load_file(finetune / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    generator = torch.Generator().manual_seed(8)
    state[name] = state[name] + torch.randn(32, 2, generator=generator) @ torch.randn(2, 32, generator=generator) * 0.02
    save_file(state, finetune / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "adapter"
    report = extract(finetune, models["base"], out, "--rank-by", "energy:0.999", "--rank", "8")
    assert list(rows(report, "lora")) == ["model.layers.0.self_attn.q_proj"] and report["r"] == 2
    assert all(r["rank"] == 0 and r["error"] == 0.0 for r in rows(report, "dropped").values())
    assert len(rows(report, "dropped")) == 13
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj"] and config["rank_pattern"] == {}
    merged = state_of(peft_model(models["base"], out))
    for tensor_name, tensor in load_state(finetune).items():
        torch.testing.assert_close(merged[tensor_name], tensor, rtol=0, atol=2e-6, msg=tensor_name)
    nothing = run_cli("extract-lora", "--model", models["base"], "--base", models["base"], "--out", tmp_path / "none",
                      "--sv-epsilon", "1e-9")
    assert_clean_error(nothing, tmp_path / "none", "every factorised module came out at rank 0")


@pytest.mark.parametrize("options", [("--rank", "4"), ("--rank-by", "energy:0.7", "--rank", "8")], ids=["fixed", "energy"])
def test_extracted_adapter_through_mergehubs_lora_input_equals_peft(tmp_path: Path, models: dict[str, Path],
                                                                   options: tuple[str, ...]) -> None:
    finetune = models["lowrank" if options[1] == "4" else "fullrank"]
    adapter = tmp_path / "adapter"
    extract(finetune, models["base"], adapter, *options)
    recipe = tmp_path / "apply.yaml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {models['base']}+{adapter}\n")
    result = run_cli("merge", recipe, "--out", tmp_path / "merged")
    assert result.returncode == 0, result.output

    merged, reference = load_state(tmp_path / "merged"), state_of(peft_model(models["base"], adapter))
    assert set(merged) == set(reference)
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=0, atol=1e-6, msg=name)


def test_biases_are_kept_as_peft_keeps_trained_biases(tmp_path: Path) -> None:
    """Qwen2's q/k/v projections have biases: a changed one is saved whole (PEFT's ``bias: lora_only``)."""
    from mergehub.testkit.tinymodels import build_tiny

    base = build_tiny(tmp_path / "qwen2", "qwen2", layers=2, seed=5, tied=False)
    finetune = make_finetune(base, tmp_path / "qwen2-ft", 2, seed=6)
    out = tmp_path / "adapter"
    extract(finetune, base, out, "--rank", "2")

    tensors = load_file(out / "adapter_model.safetensors")
    biases = {n for n in tensors if n.endswith(".bias")}
    assert biases == {f"{PREFIX}model.layers.{i}.self_attn.{p}.base_layer.bias" for i in range(2)
                      for p in ("q_proj", "k_proj", "v_proj")}
    assert json.loads((out / "adapter_config.json").read_text())["bias"] == "lora_only"
    merged, expected = state_of(peft_model(base, out)), load_state(finetune)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=2e-6, msg=name)
    recipe = tmp_path / "apply.yaml"
    recipe.write_text(f"merge_method: passthrough\nmodels:\n  - model: {base}+{out}\n")
    assert run_cli("merge", recipe, "--out", tmp_path / "merged").returncode == 0
    for name, tensor in load_state(tmp_path / "merged").items():
        torch.testing.assert_close(tensor, merged[name], rtol=0, atol=1e-6, msg=name)


def test_undecomposable_modules_are_saved_when_changed_skipped_when_asked(tmp_path: Path,
                                                                         models: dict[str, Path]) -> None:
    norms = ("input_layernorm", "post_attention_layernorm", "norm")
    unchanged = extract(models["attention_only"], models["base"], tmp_path / "same", "--rank", "4")
    assert {m.rsplit(".", 1)[-1] for m in rows(unchanged, "unchanged")} == set(norms)
    assert not any("layernorm" in n or "model.norm" in n for n in load_file(tmp_path / "same" / "adapter_model.safetensors"))
    assert unchanged["modules_to_save"] == ["embed_tokens", "lm_head"]

    skipped = extract(models["lowrank"], models["base"], tmp_path / "skip", "--rank", "4", "--skip-undecomposable")
    assert {m.rsplit(".", 1)[-1] for m in rows(skipped, "skipped")} == set(norms)
    assert skipped["modules_to_save"] == ["embed_tokens", "lm_head"]
    config = json.loads((tmp_path / "skip" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["embed_tokens", "lm_head"]


def test_include_exclude_and_save_module(tmp_path: Path, models: dict[str, Path]) -> None:
    out = tmp_path / "attention"
    report = extract(models["lowrank"], models["base"], out, "--rank", "4", "--include", "self_attn",
                     "--exclude", r"layers\.1\.", "--save-module", "o_proj")
    assert set(rows(report, "lora")) == {f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")}
    # as in mergekit, embeddings are saved whole unless excluded; --save-module ignores the regexes
    assert set(rows(report, "whole")) == {"model.embed_tokens", "lm_head", "model.layers.0.self_attn.o_proj",
                                          "model.layers.1.self_attn.o_proj"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["k_proj", "q_proj", "v_proj"]
    assert config["modules_to_save"] == ["embed_tokens", "o_proj", "lm_head"]
    excluded = extract(models["lowrank"], models["base"], tmp_path / "no-embed", "--rank", "4", "-e", "embed|lm_head")
    assert excluded["modules_to_save"] == ["input_layernorm", "post_attention_layernorm", "norm"]


def test_a_grown_vocabulary_saves_the_embeddings_whole(tmp_path: Path, models: dict[str, Path],
                                                     tiny_models: Any) -> None:
    grown = tiny_models("xgrown", seed=24, hidden=32, vocab=72)
    out = tmp_path / "adapter"
    result = run_cli("extract-lora", "--model", grown, "--base", models["base"], "--out", out, "--embed-lora",
                     "--rank", "2")
    assert result.returncode == 0, result.output
    assert "72 embedding rows and the base 64" in result.flat and "instead of --embed-lora" in result.flat
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors[f"{PREFIX}model.embed_tokens.weight"].shape == (72, 32)
    assert tensors[f"{PREFIX}lm_head.weight"].shape == (72, 32)
    assert "resize_token_embeddings(72)" in (out / "README.md").read_text()
    default = extract(grown, models["base"], tmp_path / "default", "--rank", "2")
    assert rows(default)["model.embed_tokens"]["reason"] == "embedding, vocabularies differ"
    assert "resize_token_embeddings(72)" in (tmp_path / "default" / "README.md").read_text()


def test_hub_ids_with_revisions(tmp_path: Path, models: dict[str, Path]) -> None:
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "org/base", models["base"], revision="v1")
    populate_hub_cache(cache, "org/tuned", models["lowrank"])
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "adapter"
    result = run_cli("extract-lora", "--model", "org/tuned", "--base", "org/base@v1", "--out", out, "--rank", "3",
                     env=env)
    assert result.returncode == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/base" and config["revision"] == "v1"
    card = (out / "README.md").read_text()
    assert "base_model:\n- org/base\nbase_model_relation: adapter" in card and "`org/tuned`" in card
    missing = run_cli("extract-lora", "--model", "org/tuned", "--base", "org/other", "--out", out.with_name("x"),
                      env=env)
    assert_clean_error(missing, out.with_name("x"), "--base org/other", "neither a local directory nor in the "
                       "Hugging Face cache")


def assert_clean_error(result: Any, out: Path, *phrases: str, status: int = 1) -> None:
    assert result.returncode == status, result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.flat, result.flat
    assert not out.exists() and not (out.parent / f".{out.name}.mergehub-partial").exists()


def test_mistakes_are_one_clear_error_and_leave_nothing_behind(tmp_path: Path, models: dict[str, Path],
                                                              tiny_models: Any) -> None:
    out = tmp_path / "out"
    common = ("--base", models["base"], "--out", out)
    assert_clean_error(run_cli("extract-lora", "--model", tmp_path / "missing", *common), out,
                       "--model", "not found")
    wider = tiny_models("xwide", seed=23, hidden=48, vocab=64)
    assert_clean_error(run_cli("extract-lora", "--model", wider, *common), out,
                       "the base does not match the fine-tune", "is [48, 48] in the fine-tune but [32, 32] in the base")
    assert_clean_error(run_cli("extract-lora", "--model", models["lowrank"], *common, "--exclude", "(unclosed"), out,
                       "--exclude '(unclosed' is not a valid regular expression")
    assert_clean_error(run_cli("extract-lora", "--model", models["lowrank"], *common, "--rank-by", "energy:2"), out,
                       "energy share 2.0 must be in (0, 1]", status=2)
    assert_clean_error(run_cli("extract-lora", "--model", models["lowrank"], *common, "--rank-by", "top:3"), out,
                       "unknown rank rule", status=2)
    out.mkdir()
    existing = run_cli("extract-lora", "--model", models["lowrank"], *common)
    assert existing.returncode == 1 and "already exists" in existing.flat and "--force" in existing.flat
    assert list(out.iterdir()) == []
    replaced = run_cli("extract-lora", "--model", models["lowrank"], *common, "--force", "--rank", "2")
    assert replaced.returncode == 0, replaced.output
    assert (out / "adapter_model.safetensors").is_file()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 1024, resource.RLIM_INFINITY))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as on a full disk


def test_an_interrupted_extraction_resumes_to_the_same_bytes(tmp_path: Path, models: dict[str, Path]) -> None:
    options = ["--model", str(models["lowrank"]), "--base", str(models["base"]), "--rank", "4", "--embed-lora"]
    reference = tmp_path / "reference"
    extract(models["lowrank"], models["base"], reference, *options[4:])
    out = tmp_path / "out"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    cut = subprocess.run([sys.executable, "-m", "mergehub", "extract-lora", *options, "--out", str(out)], env=env,
                         capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300)
    assert cut.returncode == 1 and "Traceback" not in cut.stderr, cut.stderr
    assert "no space left for the output" in " ".join(cut.stderr.split()) and not out.exists()
    partial = tmp_path / ".out.mergehub-partial"
    assert json.loads((partial / "mergehub_resume.json").read_text())["done"] > 0

    changed = run_cli("extract-lora", *options[:4], "--rank", "5", "--embed-lora", "--out", out, "--resume")
    assert changed.returncode == 1 and "cannot resume" in changed.flat
    assert "options: rank changed (was 4, now 5)" in changed.flat
    waiting = run_cli("extract-lora", *options, "--out", out)  # neither --resume nor --force: the work is kept
    assert waiting.returncode == 1 and "--resume" in waiting.flat and partial.is_dir()
    resumed = run_cli("extract-lora", *options, "--out", out, "--resume", "--json")
    assert resumed.returncode == 0, resumed.output
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    report = json.loads(resumed.stdout)  # modules the first run wrote are reported too
    assert all(r["error"] is not None and r["error"] < 1e-5 for r in rows(report, "lora").values())
