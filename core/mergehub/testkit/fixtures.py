"""Fixtures for testing mergehub and its plugins with real parts (published as :mod:`mergehub.testing`).

Opt in from a conftest.py with ``pytest_plugins = ["mergehub.testing"]`` (the core's
own pytest configuration does). Provides tiny real Llama/Mistral checkpoints built
with transformers, a helper that runs the real ``mergehub`` CLI in a subprocess, a
fresh plugin registry, and the plugin test kit (:mod:`mergehub.testkit.contract`) a plugin's
own tests call on its installed distribution.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mergehub.models.loader import open_reader  # noqa: F401  (re-exported for plugin tests)
from mergehub.plugin.registry import build_registry, core_schema  # noqa: F401  (re-exported for plugin tests)
from mergehub.testkit import forkcli
from mergehub.testkit.contract import (  # noqa: F401  (the plugin test kit, re-exported for plugin tests)
    architecture_problems,
    check_architecture_distribution,
    check_method_distribution,
    method_problems,
    parameter_table,
    plugin_distributions,
)
from mergehub.testkit.tensors import merge_in_blocks, related_tensors  # noqa: F401  (re-exported)
from mergehub.testkit.tinymodels import FAMILIES, build_tiny, tiny_config  # noqa: F401  (re-exported for plugin tests)


def build_tiny_model(path: Path | str, *, arch: str = "llama", layers: int = 2, tied: bool = False, seed: int = 0,
                     vocab: int = 64, hidden: int = 16, dtype: str = "float32", tokenizer: bool = False,
                     words: Sequence[str] | None = None, added: Sequence[str] = ()) -> Path:
    """Save a tiny randomly initialised causal LM with transformers' own save_pretrained.

    ``words`` and ``added`` (which imply ``tokenizer``) give the tokenizer its own vocabulary, as
    :func:`write_tiny_tokenizer` describes.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[arch]
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM}[arch]
    config = config_cls(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=vocab, tie_word_embeddings=tied, max_position_embeddings=64)
    model = model_cls(config)
    with torch.no_grad():  # default init leaves norms at 1; make every tensor distinct per seed
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model = model.to(getattr(torch, dtype))
    path = Path(path)
    model.save_pretrained(path)
    if tokenizer or words is not None or added:
        write_tiny_tokenizer(path, vocab, words, added)
    return path


def write_tiny_tokenizer(path: Path, vocab: int, words: Sequence[str] | None = None, added: Sequence[str] = ()) -> None:
    """A word-level fast tokenizer, saved with transformers.

    By default its tokens are ``<unk> <s> </s> w3 … w<vocab-1>``. With ``words`` they are ``<unk> <s> </s>``
    then ``words`` (ids from 3; fewer or more than ``vocab``), so two models can share some tokens at
    different ids; ``added`` are special tokens appended after them.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = list(words) if words is not None else [f"w{i}" for i in range(3, vocab)]
    table = {"<unk>": 0, "<s>": 1, "</s>": 2} | {word: i for i, word in enumerate(names, start=3)}
    backend = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if added:
        fast.add_tokens(list(added), special_tokens=True)
    fast.save_pretrained(path)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def flat(self) -> str:
        """``output`` as one line, for substring checks of messages that rich wrapped in a panel."""
        return flat_output(self.output)


def flat_output(text: str) -> str:
    """Rich's panel borders removed and every run of whitespace collapsed to one space."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯]|─{2,}", " ", text)).strip()


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Run the installed ``mergehub`` CLI for real, in a process of its own.

    The process is forked from a server that has torch imported already (:mod:`mergehub.testkit.forkcli`),
    which saves most of a small merge's time; ``MERGEHUB_TEST_FORK=0`` starts a fresh interpreter instead.
    """
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    code, stdout, stderr = forkcli.run_mergehub([str(a) for a in args], cwd, full_env, Path(tempfile.gettempdir()))
    return CliResult(code, stdout, stderr)


def merge_ok(cfg: Path, out: Path, *extra: str | Path) -> str:
    """``mergehub merge cfg --out out …`` that must succeed; returns its output."""
    result = run_cli("merge", cfg, "--out", out, *extra)
    assert result.returncode == 0, result.output
    return result.output


def load_state(directory: Path) -> dict[str, Any]:
    """All tensors of a model directory (tests only: tiny models)."""
    import json

    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(directory / file))
    return state


def model_class(directory: Path) -> Any:
    """transformers' class named by ``config.json`` (``architectures[0]``), else AutoModelForCausalLM."""
    import json

    import transformers

    names = json.loads((Path(directory) / "config.json").read_text()).get("architectures") or []
    found = getattr(transformers, names[0], None) if names else None
    return found or transformers.AutoModelForCausalLM


def forward_pass(directory: Path, ids: Sequence[int] = (1, 5, 7, 9)) -> Any:
    """Load with the class its config.json names and run a text-only forward pass; returns the logits."""
    import torch

    model = model_class(directory).from_pretrained(directory)
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)])).logits
    assert torch.isfinite(logits).all()
    return logits


def stack_by_hand(pieces: Sequence[tuple[Path, int, int]], per_layer_keys: Sequence[str] = ("layer_types", "no_rope_layers"),
                  index_keys: Sequence[str] = ("mlp_only_layers", "moe_layers"),
                  mapping_keys: Sequence[str] = ("per_layer_config",),
                  ids: Sequence[int] = tuple(range(1, 13))) -> Any:
    """The logits of the model a passthrough recipe of ``pieces`` (model, start, end) should give,
    assembled with transformers alone: each piece loaded with ``from_pretrained``; the tensors before
    the decoder's layer list (in the model's own module order) from the first piece, the pieces'
    layers, the tensors after the list from the last piece; each per-layer config list (as
    transformers fills it in), each list of layer numbers and each per-layer settings mapping taken from
    the layers' own models."""
    import torch
    import transformers

    models = [model_class(path).from_pretrained(path) for path, _, _ in pieces]
    decoder = models[0].get_decoder()
    layers = getattr(decoder, "layers", None) or decoder.model.layers  # Llama 4's decoder is a whole causal LM
    stack = next(name for name, module in models[0].named_modules() if module is layers)
    config = transformers.AutoConfig.from_pretrained(pieces[0][0])
    whole = config.to_dict()
    nested = "text_config" in whole and config.get_text_config() is not config
    text = whole["text_config"] if nested else whole
    sources = [m.config.get_text_config().to_dict() for m in models]
    text["num_hidden_layers"] = sum(end - start for _, start, end in pieces)
    layer_of = [(src, layer) for src, (_, start, end) in zip(sources, pieces) for layer in range(start, end)]
    for key in per_layer_keys:
        if all(isinstance(src.get(key), list) for src in sources):
            text[key] = [src[key][layer] for src, layer in layer_of]
    for key in index_keys:
        if all(isinstance(src.get(key), list) for src in sources):
            text[key] = [i for i, (src, layer) in enumerate(layer_of) if layer in src[key]]
    for key in mapping_keys:
        if all(isinstance(src.get(key), dict) for src in sources):
            by_layer = [{int(k): v for k, v in src[key].items()} for src in sources]
            owners = [by_layer[j] for j, (_, start, end) in enumerate(pieces) for _ in range(start, end)]
            text[key] = {str(i): owner[layer] for i, (owner, (_, layer)) in enumerate(zip(owners, layer_of)) if layer in owner}
    config = type(config).from_dict(whole)
    states = [m.state_dict() for m in models]
    order = list(states[0])
    inside = lambda n: n.startswith(stack + ".")  # noqa: E731
    after = {n for i, n in enumerate(order) if not inside(n) and any(inside(m) for m in order[:i])}
    state = {n: (states[-1] if n in after else states[0])[n] for n in order if not inside(n)}
    offset = 0
    for source, (_, start, end) in zip(states, pieces):
        for name, tensor in source.items():
            index, _, rest = name[len(stack) + 1:].partition(".") if inside(name) else ("", "", "")
            if index.isdigit() and start <= int(index) < end:
                state[f"{stack}.{offset + int(index) - start}.{rest}"] = tensor
        offset += end - start
    model = type(models[0])(config)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing, unexpected = model.load_state_dict({n: t for n, t in state.items() if n not in tied}, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= tied, missing
    model.tie_weights()  # a tied output head is the first piece's embedding, as in the merge
    with torch.no_grad():
        return model.eval()(torch.tensor([list(ids)])).logits


class HeadersOnly:
    """A reader that serves names and headers from the real one and fails on any read of tensor data."""

    def __init__(self, reader: Any, calls: list[str]) -> None:
        self.reader, self.calls = reader, calls

    def tensor_names(self) -> list[str]:
        return self.reader.tensor_names()

    def header(self, name: str) -> Any:
        self.calls.append(name)
        return self.reader.header(name)

    def read(self, name: str) -> Any:
        raise AssertionError(f"tensor data of {name} was read")

    def read_rows(self, name: str, start: int, stop: int) -> Any:
        raise AssertionError(f"rows of {name} were read")

    def close(self) -> None:
        self.reader.close()


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_hub_cache(cache: Path, repo_id: str, source: Path, revision: str = "main",
                       commit: str = HUB_COMMIT) -> Path:
    """Lay ``source``'s files out as huggingface_hub caches a download of ``repo_id`` (refs + snapshot).

    Point ``HF_HUB_CACHE`` at ``cache`` and set ``HF_HUB_OFFLINE=1`` to resolve ``repo_id`` (or
    ``repo_id@revision``) through the real huggingface_hub code path without a network. Works for
    any model repository: full models and LoRA adapters alike. Returns the snapshot directory.
    """
    import shutil

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in Path(source).iterdir():
        shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def check_definition(definition: dict[str, Any], checkpoint: Path) -> set[str]:
    """Assert an architecture definition fits a real checkpoint; returns the checkpoint's tensor names.

    Every tensor in the checkpoint must be named by the definition, and every
    non-optional tensor of the definition must be in the checkpoint.
    """
    import json

    from mergehub.models.architecture import from_definition, get_key

    layout = from_definition(definition)
    layers = get_key(json.loads((checkpoint / "config.json").read_text()), layout.num_layers_key or "")
    fixed, per_layer = layout.pre + layout.post, [(w, i) for w in layout.layer for i in range(layers)]
    possible = {w.name for w in fixed} | {w.at(i) for w, i in per_layer}
    required = {w.name for w in fixed if not w.optional} | {w.at(i) for w, i in per_layer if not w.optional}
    present = set(load_state(checkpoint))
    assert present <= possible, f"not in the definition: {sorted(present - possible)}"
    assert required <= present, f"missing from the checkpoint: {sorted(required - present)}"
    return present


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``tiny_models("a", layers=8, tied=True)`` builds (once per session) and returns a model directory."""
    root = tmp_path_factory.mktemp("tiny-models")
    cache: dict[tuple, Path] = {}

    def make(name: str, **kwargs: Any) -> Path:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = build_tiny_model(root / f"{name}-{len(cache)}", **kwargs)
        return cache[key]

    return make


@pytest.fixture
def mergehub_cli() -> Callable[..., CliResult]:
    return run_cli


@pytest.fixture
def fresh_registry() -> Any:
    """A registry built from a brand-new plugin manager over the installed entry points."""
    from mergehub.plugin.discovery import make_plugin_manager
    from mergehub.plugin.registry import build_registry

    return build_registry(make_plugin_manager())


def plan_problems(text: str) -> list[str]:
    """The problems planning the one-document recipe ``text`` reports, as messages (empty: it plans).

    Runs in-process and reads only headers, so a method's contract and parameter checks are quick to test.
    """
    from mergehub.common.errors import RecipeError
    from mergehub.plan.planner import make_plan
    from mergehub.recipe.config import load_recipe
    from mergehub.recipe.yamlsource import parse_documents

    registry = build_registry()
    try:
        make_plan(load_recipe(parse_documents(text)[0], registry), registry).close()
    except RecipeError as exc:
        return [problem.message for problem in exc.problems]
    return []


def install_distribution(site: Path, dist: str, files: dict[str, str], *, version: str = "0.1.0",
                         entry_points: dict[str, str] | None = None, readme: str = "") -> Path:
    """Install a distribution by hand under ``site`` (a directory for PYTHONPATH or ``sys.path``), as pip would.

    ``files`` maps paths relative to ``site`` to their text (dedented). The ``NAME-VERSION.dist-info`` holds
    METADATA (``readme`` as its long description) and ``mergehub`` entry points (default: the distribution's
    name pointing at its package, ``dist`` with ``_`` for ``-``), so discovery finds it as an installed plugin.
    """
    import textwrap

    package = dist.replace("-", "_")
    for relative, text in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(textwrap.dedent(text).lstrip("\n"))
    info = site / f"{package}-{version}.dist-info"
    info.mkdir(parents=True)
    metadata = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    if readme:
        metadata += f"Description-Content-Type: text/markdown\n\n{readme}"
    (info / "METADATA").write_text(metadata)
    points = entry_points if entry_points is not None else {dist: package}
    (info / "entry_points.txt").write_text("\n".join(["[mergehub]", *(f"{k} = {v}" for k, v in points.items())]) + "\n")
    return site


def env_with_site(site: Path | None = None, **variables: str) -> dict[str, str]:
    """Environment variables for :func:`run_cli`: ``variables``, with ``site`` first on PYTHONPATH."""
    env = dict(variables)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env

