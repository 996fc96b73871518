"""Output tokenizers and vocabulary alignment (tokenizer_source / tokenizer:) and chat templates, through the CLI.

Tiny models get tiny word-level tokenizers with overlapping but different vocabularies. Every expected
embedding row is computed here from the sources' state dicts and tokenizers, by the rules of
mergekit (reference §1.7), never from mergehub's own permutations.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mergehub.testing import (
    build_tiny_model,
    forward_pass,
    load_state,
    merge_ok,
    run_cli,
)

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
WORDS_A = [f"w{i}" for i in range(3, 50)]
WORDS_B = [f"w{i}" for i in range(30, 60)] + [f"x{i}" for i in range(10)]
WORDS_C = [f"w{i}" for i in range(3, 21)] + [f"y{i}" for i in range(6)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """a: 64 rows, 52 tokens; b: 44 rows, 45 tokens (its last, <|b|>, has no row); c: 32 rows, 27 tokens;
    s: 40 rows but 51 tokens (stripped when it is the base); n: no tokenizer at all; ta/tb: tied."""
    root = tmp_path_factory.mktemp("tokenizer-models")
    specs = {
        "a": dict(seed=1, vocab=64, words=WORDS_A, added=["<|a|>", "<|both|>"]),
        "b": dict(seed=2, vocab=44, words=WORDS_B, added=["<|both|>", "<|b|>"]),
        "c": dict(seed=3, vocab=32, words=WORDS_C),
        "s": dict(seed=4, vocab=40, words=WORDS_A, added=["<|s|>"]),
        "n": dict(seed=5, vocab=64),
        "ta": dict(seed=6, vocab=64, words=WORDS_A, added=["<|a|>"], tied=True),
        "tb": dict(seed=7, vocab=44, words=WORDS_B, tied=True),
    }
    return {name: build_tiny_model(root / name, layers=1, **spec) for name, spec in specs.items()}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def vocab_of(directory: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory).get_vocab()


@dataclass
class Source:
    """One input model as the rules see it: its vocabulary tensor, its token ids and its rows' limit."""

    matrix: torch.Tensor
    vocab: dict[str, int]
    limit: int

    def row_of(self, token: str) -> int | None:
        i = self.vocab.get(token)
        return i if i is not None and i < self.limit else None


def source(directory: Path, name: str = EMBED, vocab_from: Path | None = None) -> Source:
    state = load_state(directory)
    matrix = state[name] if name in state else state[EMBED]  # tied models: lm_head reads the embedding
    limit = json.loads((directory / "config.json").read_text())["vocab_size"]
    return Source(matrix.double(), vocab_of(vocab_from or directory), limit)


def aligned(out_vocab: dict[str, int], size: int, sources: list[Source], base: int | None = None,
            tokens: dict[str, tuple[bool, tuple | None]] | None = None) -> list[torch.Tensor]:
    """Each source's matrix rebuilt for ``out_vocab`` (``tokens``: token -> (force, explicit source))."""
    tokens = tokens or {}
    real = len(out_vocab)
    result = [torch.zeros(size, s.matrix.shape[1], dtype=torch.float64) for s in sources]
    for token, i in out_vocab.items():
        force, explicit = tokens.get(token, (False, None))
        present = [(m, s.row_of(token)) for m, s in enumerate(sources) if s.row_of(token) is not None]
        if explicit is not None:
            kind, *args = explicit
            if kind == "zero":
                default = torch.zeros(sources[0].matrix.shape[1], dtype=torch.float64)
            elif kind == "model":
                default = sources[args[0]].matrix[sources[args[0]].row_of(token)]
            else:  # model_token: (model, token text or row)
                m, what = args
                default = sources[m].matrix[what if isinstance(what, int) else sources[m].vocab[what]]
        elif len(present) == 1:
            default = sources[present[0][0]].matrix[present[0][1]]
        elif base is not None and sources[base].row_of(token) is not None:
            default = sources[base].matrix[sources[base].row_of(token)]
        elif present:
            default = torch.stack([sources[m].matrix[r] for m, r in present]).mean(0)
        else:
            default = torch.zeros(sources[0].matrix.shape[1], dtype=torch.float64)
        for m, s in enumerate(sources):
            own = s.row_of(token)
            result[m][i] = s.matrix[own] if own is not None and not force else default
    for matrix in result:
        matrix[real:] = matrix[:real].mean(0)
    return result


def linear(aligned_inputs: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    return sum(w * t for w, t in zip(weights, aligned_inputs)) / sum(weights)


def union_recipe(directory: Path, models: dict[str, Path], extra: str = "", names: tuple[str, ...] = ("a", "b", "c"),
                 weights: tuple[float, ...] = (0.5, 0.3, 0.2)) -> Path:
    lines = ["merge_method: linear", "models:"]
    lines += [f"  - {{model: {models[n]}, parameters: {{weight: {w}}}}}" for n, w in zip(names, weights)]
    return write(directory / "r.yaml", "\n".join(lines) + "\n" + extra)


def generate_with_template(directory: Path) -> str:
    """Load tokenizer and model with transformers, render the chat template and generate 3 tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    messages = [{"role": "system", "content": "w5"}, {"role": "user", "content": "w7 w9"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**encoded, max_new_tokens=3, do_sample=False)
    prompt = encoded["input_ids"].shape[-1]
    assert prompt < generated.shape[-1] <= prompt + 3
    assert int(generated.max()) < model.config.vocab_size
    return text


# -- union -----------------------------------------------------------------------------------------
def test_union_vocabulary_token_by_token(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "tokenizer_source: union\n")
    output = merge_ok(cfg, tmp_path / "out")
    out = tmp_path / "out"
    vocab = vocab_of(out)
    a, b, c = (vocab_of(models[n]) for n in "abc")

    # the base (a, first in recipe order) keeps its ids; then b's and c's normal tokens it lacks;
    # <|b|> has id 44 in a 44-row model: it has no row and is left out, with a warning
    assert all(vocab[t] == i for t, i in a.items())
    expected = set(a) | {t for t, i in b.items() if i < 44} | set(c)
    assert set(vocab) == expected and "<|b|>" not in vocab
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert "have ids at or above its vocab_size (44)" in " ".join(output.split())
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) == 52 + 20 + 6
    assert not (out / "generation_config.json").exists()  # saved with save_pretrained, as mergekit does

    merged = load_state(out)
    for name in (EMBED, HEAD):
        sources = [source(models[n], name) for n in "abc"]
        expected_rows = linear(aligned(vocab, len(vocab), sources), [0.5, 0.3, 0.2])
        assert merged[name].shape == (len(vocab), 16)
        for token, i in vocab.items():  # token by token, so a failure names the token
            torch.testing.assert_close(merged[name][i].double(), expected_rows[i], rtol=0, atol=1e-6,
                                       msg=lambda m, t=token, n=name: f"{n} row of {t!r}: {m}")
    # spot checks of the rules themselves: only b has x3 -> every model takes b's row
    x3 = vocab["x3"]
    torch.testing.assert_close(merged[EMBED][x3].double(), source(models["b"]).matrix[b["x3"]], rtol=0, atol=1e-6)
    forward_pass(out)


def test_base_source_strips_tokens_without_rows(tmp_path, models):
    """s has 40 rows and 51 tokens: as the base its tokenizer loses ids >= 40, and so does the vocabulary."""
    cfg = write(tmp_path / "r.yaml", f"merge_method: linear\nparameters: {{weight: 1}}\nbase_model: {models['s']}\n"
                                     f"models:\n  - model: {models['s']}\n  - model: {models['a']}\n"
                                     "tokenizer_source: base\n")
    merge_ok(cfg, tmp_path / "out")
    out = tmp_path / "out"
    vocab, full = vocab_of(out), vocab_of(models["s"])
    assert vocab == {t: i for t, i in full.items() if i < 40}
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 40
    merged = load_state(out)
    for name in (EMBED, HEAD):
        expected = linear(aligned(vocab, 40, [source(models["s"], name), source(models["a"], name)], base=0), [1, 1])
        torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-6)
    forward_pass(out)


def test_base_source_shrinks_a_padded_embedding(tmp_path, models):
    """a has 64 rows but 52 tokens: the output has 52 rows and vocab_size 52 (mergekit's 256 -> 253)."""
    cfg = union_recipe(tmp_path, models, "tokenizer: {source: base}\n", names=("a", "b"), weights=(1, 1))
    merge_ok(cfg, tmp_path / "out")
    vocab = vocab_of(tmp_path / "out")
    assert vocab == vocab_of(models["a"]) and len(vocab) == 52
    assert json.loads((tmp_path / "out/config.json").read_text())["vocab_size"] == 52
    expected = linear(aligned(vocab, 52, [source(models[n]) for n in "ab"]), [1, 1])
    torch.testing.assert_close(load_state(tmp_path / "out")[EMBED].double(), expected, rtol=0, atol=1e-6)


def test_model_source_uses_that_tokenizer_unstripped(tmp_path, models):
    """tokenizer_source: b takes b's tokenizer whole: its <|b|> has a row in no model, so zeros and a warning."""
    cfg = union_recipe(tmp_path, models, f"tokenizer_source: {models['b']}\n", names=("a", "b"), weights=(0.7, 0.3))
    output = merge_ok(cfg, tmp_path / "out")
    vocab = vocab_of(tmp_path / "out")
    assert vocab == vocab_of(models["b"]) and len(vocab) == 45
    assert "in no model" in output and "<|b|>" in output
    merged = load_state(tmp_path / "out")
    for name in (EMBED, HEAD):
        expected = linear(aligned(vocab, 45, [source(models[n], name) for n in "ab"]), [0.7, 0.3])
        torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-6)
    assert torch.count_nonzero(merged[EMBED][vocab["<|b|>"]]) == 0
    forward_pass(tmp_path / "out")


def test_tokens_sources_and_force(tmp_path, models):
    a_ref, b_ref = models["a"], models["b"]
    extra = f"""base_model: {a_ref}
tokenizer:
  source: union
  tokens:
    w35: {{source: {b_ref}, force: true}}
    w40: {{force: true}}
    x3: {{source: {{kind: zero}}, force: true}}
    w5: {{source: {{kind: zero}}}}
    "<|new|>": {{source: {{kind: model_token, model: {a_ref}, token: w7}}}}
    "<|new2|>": {{source: {{kind: model_token, model: {b_ref}, token_id: 3}}}}
"""
    cfg = union_recipe(tmp_path, models, extra, names=("a", "b"), weights=(0.6, 0.4))
    merge_ok(cfg, tmp_path / "out")
    vocab = vocab_of(tmp_path / "out")
    assert {"<|new|>", "<|new2|>"} <= set(vocab)  # tokens: entries a tokenizer lacks are added
    tokens = {"w35": (True, ("model", 1)), "w40": (True, None), "x3": (True, ("zero",)), "w5": (False, ("zero",)),
              "<|new|>": (False, ("model_token", 0, "w7")), "<|new2|>": (False, ("model_token", 1, 3))}
    merged = load_state(tmp_path / "out")
    for name in (EMBED, HEAD):
        sources = [source(models[n], name) for n in "ab"]
        expected = linear(aligned(vocab, len(vocab), sources, base=0, tokens=tokens), [0.6, 0.4])
        torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-6)
    b = source(models["b"])
    a = source(models["a"])
    row = lambda t: merged[EMBED][vocab[t]].double()  # noqa: E731
    torch.testing.assert_close(row("w35"), b.matrix[b.vocab["w35"]], rtol=0, atol=1e-6)  # forced: b's row for all
    torch.testing.assert_close(row("w40"), a.matrix[a.vocab["w40"]], rtol=0, atol=1e-6)  # forced, no source: the base
    assert torch.count_nonzero(row("x3")) == 0
    torch.testing.assert_close(row("w5"), 0.6 * a.matrix[a.vocab["w5"]], rtol=0, atol=1e-6)  # b lacks w5: zeros for b
    torch.testing.assert_close(row("<|new|>"), a.matrix[a.vocab["w7"]], rtol=0, atol=1e-6)
    torch.testing.assert_close(row("<|new2|>"), b.matrix[3], rtol=0, atol=1e-6)


def test_pad_to_multiple_of_pads_with_the_mean_row(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "tokenizer: {source: union, pad_to_multiple_of: 32}\n")
    merge_ok(cfg, tmp_path / "out")
    vocab = vocab_of(tmp_path / "out")
    assert len(vocab) == 78
    assert json.loads((tmp_path / "out/config.json").read_text())["vocab_size"] == 96
    merged = load_state(tmp_path / "out")
    for name in (EMBED, HEAD):
        inputs = aligned(vocab, 96, [source(models[n], name) for n in "abc"])
        assert all(torch.equal(t[78:], t[:78].mean(0).expand(18, -1)) for t in inputs)  # each model's mean row
        assert merged[name].shape == (96, 16)
        torch.testing.assert_close(merged[name].double(), linear(inputs, [0.5, 0.3, 0.2]), rtol=0, atol=1e-6)
    forward_pass(tmp_path / "out")


def test_a_model_without_tokenizer_is_taken_to_share_the_base_vocabulary(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "tokenizer_source: union\n", names=("a", "n"), weights=(1, 1))
    output = merge_ok(cfg, tmp_path / "out")
    assert "cannot load the tokenizer of" in output and "same as" in output
    vocab = vocab_of(tmp_path / "out")
    assert vocab == vocab_of(models["a"])
    expected = linear(aligned(vocab, 52, [source(models["a"]), source(models["n"], vocab_from=models["a"])]), [1, 1])
    torch.testing.assert_close(load_state(tmp_path / "out")[EMBED].double(), expected, rtol=0, atol=1e-6)


# -- tied embeddings -----------------------------------------------------------------------------
def test_tied_llamas_union_aligns_the_embedding_only(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "tokenizer_source: union\n", names=("ta", "tb"), weights=(1, 1))
    merge_ok(cfg, tmp_path / "out")
    merged, vocab = load_state(tmp_path / "out"), vocab_of(tmp_path / "out")
    assert HEAD not in merged
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["vocab_size"] == len(vocab)
    expected = linear(aligned(vocab, len(vocab), [source(models[n]) for n in ("ta", "tb")]), [1, 1])
    torch.testing.assert_close(merged[EMBED].double(), expected, rtol=0, atol=1e-6)
    forward_pass(tmp_path / "out")


def test_tied_and_untied_union_aligns_the_tied_models_embedding_as_lm_head(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "tokenizer_source: union\n", names=("tb", "a"), weights=(1, 1))
    merge_ok(cfg, tmp_path / "out")
    merged, vocab = load_state(tmp_path / "out"), vocab_of(tmp_path / "out")
    assert json.loads((tmp_path / "out/config.json").read_text())["tie_word_embeddings"] is False
    for name in (EMBED, HEAD):  # tb has no lm_head: its embedding stands in, aligned the same way
        expected = linear(aligned(vocab, len(vocab), [source(models["tb"], name), source(models["a"], name)]), [1, 1])
        torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-6)
    forward_pass(tmp_path / "out")


# -- blocks, plan and validate -------------------------------------------------------------------
BLOCK_RECIPES = {
    "linear": "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
              "  - {{model: {b}, parameters: {{weight: 0.5}}}}\n  - {{model: {c}, parameters: {{weight: 0.2}}}}\n",
    "ties": "merge_method: ties\nbase_model: {a}\nmodels:\n  - {{model: {b}, parameters: {{weight: 0.7, density: 0.3}}}}\n"
            "  - {{model: {c}, parameters: {{weight: 0.4, density: 0.6}}}}\n",
    "slerp": "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\nparameters: {{t: 0.4}}\n",
}


@pytest.mark.parametrize("method", sorted(BLOCK_RECIPES))
def test_row_blocks_give_the_bytes_of_whole_reads(tmp_path, models, method):
    text = BLOCK_RECIPES[method].format(a=models["a"], b=models["b"], c=models["c"])
    cfg = write(tmp_path / "r.yaml", text + "dtype: bfloat16\ntokenizer: {source: union, pad_to_multiple_of: 32}\n")
    merge_ok(cfg, tmp_path / "whole", "--max-memory", "1GB")
    merge_ok(cfg, tmp_path / "blocked", "--max-memory", "2KiB")  # a few rows per block
    whole, blocked = load_state(tmp_path / "whole"), load_state(tmp_path / "blocked")
    assert set(whole) == set(blocked) and whole[EMBED].shape[0] == 96
    assert all(torch.equal(whole[n], blocked[n]) for n in whole)


def test_plan_and_validate_agree_with_the_written_shapes(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "tokenizer: {source: union, pad_to_multiple_of: 32}\n")
    result = run_cli("plan", cfg, "--json")
    assert result.returncode == 0, result.output
    planned = json.loads(result.stdout)["stages"][0]["write_bytes"]
    validated = run_cli("validate", cfg)
    assert validated.returncode == 0, validated.output
    merge_ok(cfg, tmp_path / "out")
    written = load_state(tmp_path / "out")
    assert planned == sum(t.numel() * t.element_size() for t in written.values())
    assert written[EMBED].shape == (96, 16)


def _planned_readers_keep_their_plan() -> bool:
    from types import SimpleNamespace

    from mergehub.plan.stages import PlannedReader

    return hasattr(PlannedReader(SimpleNamespace(tensors=[])), "plan")  # type: ignore[arg-type]


@pytest.mark.skipif(not _planned_readers_keep_their_plan(),
                    reason="needs mergehub.plan.stages.PlannedReader to keep its plan (self.plan = plan)")
def test_a_later_stage_builds_on_the_tokenizer_an_earlier_stage_will_write(tmp_path, models):
    """Stage 2's tokenizer base is stage 1's output, which does not exist when every stage is planned."""
    cfg = write(tmp_path / "r.yaml", f"""name: first
merge_method: linear
parameters: {{weight: 1}}
models:
  - model: {models['a']}
  - model: {models['b']}
tokenizer_source: union
---
merge_method: linear
parameters: {{weight: 1}}
models:
  - model: first
  - model: {models['c']}
tokenizer_source: union
""")
    plan = run_cli("plan", cfg, "--out", tmp_path / "out", "--json")
    assert plan.returncode == 0, plan.output
    merge_ok(cfg, tmp_path / "out")
    first, vocab = tmp_path / "out.stages/first", vocab_of(tmp_path / "out")
    assert set(vocab) == set(vocab_of(first)) | set(vocab_of(models["c"]))
    expected = linear(aligned(vocab, len(vocab), [source(first), source(models["c"])]), [1, 1])
    torch.testing.assert_close(load_state(tmp_path / "out")[EMBED].double(), expected, rtol=0, atol=1e-6)
    stages = json.loads(plan.stdout)["stages"]
    assert stages[-1]["write_bytes"] == sum(t.numel() * t.element_size() for t in load_state(tmp_path / "out").values())


# -- chat templates ------------------------------------------------------------------------------
def test_builtin_chat_template_generates(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "tokenizer_source: union\nchat_template: chatml\n", names=("a", "b"),
                       weights=(1, 1))
    merge_ok(cfg, tmp_path / "out")
    template = (Path(__import__("mergehub.recipe").recipe.__file__).parent / "chat_templates" / "chatml.jinja").read_text()
    assert (tmp_path / "out/chat_template.jinja").read_text() == template
    assert "chat_template" not in json.loads((tmp_path / "out/tokenizer_config.json").read_text())
    text = generate_with_template(tmp_path / "out")
    assert text == "<|im_start|>system\nw5<|im_end|>\n<|im_start|>user\nw7 w9<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", ["alpaca", "llama3", "mistral", "exaone"])
def test_every_builtin_template_renders_and_generates(tmp_path, models, name):
    """Without a tokenizer config: the donor's tokenizer is saved again with the template."""
    cfg = union_recipe(tmp_path, models, f"chat_template: {name}\n", names=("a",), weights=(1,))
    merge_ok(cfg, tmp_path / "out")
    assert not (tmp_path / "out/generation_config.json").exists()  # re-serialized, as mergekit does
    text = generate_with_template(tmp_path / "out")
    assert "w7 w9" in text and "w5" in text


def test_literal_chat_template_generates(tmp_path, models):
    template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    cfg = union_recipe(tmp_path, models, f"tokenizer_source: base\nchat_template: {json.dumps(template)}\n",
                       names=("a", "b"), weights=(1, 1))
    merge_ok(cfg, tmp_path / "out")
    assert (tmp_path / "out/chat_template.jinja").read_text() == template
    assert generate_with_template(tmp_path / "out") == "<system> w5 <user> w7 w9 "


def test_auto_chat_template_generates(tmp_path, models):
    shutil.copytree(models["b"], tmp_path / "b")
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    (tmp_path / "b/chat_template.jinja").write_text(template)  # only b has a template: auto picks it
    cfg = union_recipe(tmp_path, {**models, "b": tmp_path / "b"}, "tokenizer_source: union\nchat_template: auto\n",
                       names=("a", "b"), weights=(1, 1))
    merge_ok(cfg, tmp_path / "out")
    assert (tmp_path / "out/chat_template.jinja").read_text() == template
    assert generate_with_template(tmp_path / "out") == "w5\nw7 w9\n"


def test_without_tokenizer_config_or_template_the_files_are_copied(tmp_path, models):
    cfg = union_recipe(tmp_path, models, "", names=("a",), weights=(1,))
    merge_ok(cfg, tmp_path / "out")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (models["a"] / name).read_bytes()


# -- mistakes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "said"), [("chatm", "did you mean 'chatml'"), ('"{{ short }}"', "neither auto"),
                                             ('"no braces here but long enough"', "neither auto")])
def test_bad_chat_template_is_a_located_error(tmp_path, models, value, said):
    cfg = union_recipe(tmp_path, models, f"chat_template: {value}\n", names=("a",), weights=(1,))
    for verb in (("validate", cfg), ("merge", cfg, "--out", tmp_path / "out")):
        result = run_cli(*verb)
        text = " ".join(result.output.split())
        assert result.returncode == 1 and "Traceback" not in result.output
        assert said in text and "r.yaml:4" in text and "chat_template" in text
    assert not (tmp_path / "out").exists()


def test_a_token_source_lacking_the_token_is_a_located_error(tmp_path, models):
    extra = f"tokenizer:\n  source: union\n  tokens:\n    w5: {{source: {models['b']}, force: true}}\n"
    cfg = union_recipe(tmp_path, models, extra, names=("a", "b"), weights=(1, 1))
    result = run_cli("validate", cfg)
    text = " ".join(result.output.split())
    assert result.returncode == 1 and "Traceback" not in result.output
    assert "token 'w5' is not in the vocabulary of" in text and "r.yaml:8" in text and "tokenizer.tokens.w5.source" in text


def test_model_token_needs_token_or_token_id(tmp_path, models):
    extra = f"tokenizer:\n  tokens:\n    w5: {{source: {{kind: model_token, model: {models['b']}}}}}\n"
    cfg = union_recipe(tmp_path, models, extra, names=("a", "b"), weights=(1, 1))
    result = run_cli("validate", cfg)
    assert result.returncode == 1 and "Traceback" not in result.output
    assert "exactly one of 'token' and 'token_id'" in " ".join(result.output.split())


def test_stripping_a_bpe_tokenizer_drops_merges_of_removed_tokens():
    """strip_tokenizer on a real BPE tokenizer: ids at or above the limit go, and so do merges making them."""
    from mergehub.models.tokenizer import strip_tokenizer
    from tokenizers import Tokenizer
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4}
    bpe = Tokenizer(tokenizer_models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c")]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    stripped = strip_tokenizer(tokenizer, 4, "test")
    assert stripped.get_vocab() == {"a": 0, "b": 1, "c": 2, "ab": 3}
    assert stripped.convert_ids_to_tokens(stripped("abc", add_special_tokens=False)["input_ids"]) == ["ab", "c"]
    assert strip_tokenizer(tokenizer, 5, "test") is tokenizer  # nothing to strip: unchanged
