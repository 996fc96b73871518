"""The output tokenizer (``tokenizer_source`` / ``tokenizer:``) and the chat template, with transformers.

mergekit's rules (reference §1.7, §1.8): the tokenizer *base* is ``base_model``, else the first model
in recipe order (deterministic, unlike mergekit's set order). Its fast tokenizer is stripped of the
tokens whose id is at or above its config's ``vocab_size`` (they have no embedding row). ``base`` uses
it as is; ``union`` adds the normal tokens other models have and it lacks, then their added and
special tokens (the first settings seen win); a model reference uses that model's tokenizer, not
stripped. Tokens named under ``tokens:`` are added when missing. A model whose tokenizer cannot be
loaded is taken to have the base's vocabulary, with a warning. (mergekit strips only BPE tokenizers;
WordLevel, WordPiece and Unigram ones are stripped here too.)

A tokenizer whose files ask transformers to import a Python class of the model's own (an ``auto_map``
in ``tokenizer_config.json`` or ``config.json``) is code from whoever made the model: it is imported
only with ``--trust-remote-code``. Without it, the tokenizer base (or a ``tokenizer_source`` model)
needing it is an error, and any other model's tokenizer is treated as one that does not load (§1.7:
the base's vocabulary, with a warning saying why). A model's own configuration code is never imported.

transformers is imported only when a recipe asks for a tokenizer or a chat template, so
``mergehub validate`` of other recipes stays light.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mergehub.common.errors import MergehubError
from mergehub.models.vocab import OutputVocab, vocab_size_of
from mergehub.recipe.chattemplate import builtin_template
from mergehub.recipe.config import ModelRef, TokenizerSettings

Warn = Callable[[str], None]

#: Files whose presence means a directory holds a tokenizer worth trying to load.
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "tekken.json")
def template_of(directory: Path) -> str | None:
    """A model's own chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)."""
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            value = json.loads((directory / name).read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list):  # named templates: use the default one
            value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(value, str):
            return value
    return None


def resolve_template(value: str | None, directories: list[Path]) -> str | None:
    """The template text to write: auto = the most common among ``directories`` (first on a tie)."""
    if value is None:
        return None
    if value == "auto":
        templates = [t for t in (template_of(d) for d in directories) if t]
        return Counter(templates).most_common(1)[0][0] if templates else None
    return builtin_template(value) or value


def plan_template(value: str | None, models: list[Any], builds_tokenizer: bool) -> tuple[str | None, str | None]:
    """The template text to write, and a warning when it cannot be (the donor, ``models[0]``, has no tokenizer)."""
    template = resolve_template(value, [m.directory for m in models])
    donor = models[0]
    if template is None or builds_tokenizer or donor.planned:
        return template, None
    if any((donor.directory / name).is_file() for name in TOKENIZER_MARKERS):
        return template, None
    return template, f"{donor.ref} has no tokenizer, so the chat template is written without one"


# -- loading -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' own warnings (about its defaults) would drown ours."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


class RemoteCodeError(MergehubError):
    """A tokenizer needs a Python class shipped with the model, and --trust-remote-code was not given."""

    def __init__(self, who: str, file: str, reference: str, directory: Path):
        self.who, self.file, self.reference = who, file, reference
        super().__init__(
            f"the tokenizer of {who} needs remote code: its {file} maps AutoTokenizer to {reference}, a Python class "
            f"shipped in {directory}, and mergehub runs no code from models unless told to",
            hint="read that code; if you trust it, pass --trust-remote-code to let transformers import it. Otherwise "
                 "use another model's tokenizer (base_model, or tokenizer_source: <model>)")


def remote_code_of(directory: Path) -> tuple[str, str] | None:
    """(file, class reference) of the custom tokenizer class ``directory`` asks transformers to import, if any.

    transformers reads ``auto_map`` from tokenizer_config.json (a dict with ``AutoTokenizer``, or the
    older [slow, fast] list) and, in older versions, ``auto_map.AutoTokenizer`` of config.json.
    """
    for name in ("tokenizer_config.json", "config.json"):
        try:
            auto_map = json.loads((directory / name).read_text(encoding="utf-8")).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        entry = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map
        refs = [entry] if isinstance(entry, str) else entry if isinstance(entry, list) else []
        found = next((r for r in refs if isinstance(r, str) and r), None)
        if found:
            return name, found
    return None


def load_tokenizer(directory: Path, trust_remote_code: bool = False, who: str | None = None) -> Any | None:
    """The fast tokenizer saved in ``directory``, or None when there is none that loads.

    Raises :class:`RemoteCodeError` when it needs the model's own code and ``trust_remote_code`` is off.
    """
    if not any((directory / name).is_file() for name in TOKENIZER_MARKERS):
        return None
    remote = remote_code_of(directory)
    if remote is not None and not trust_remote_code:
        raise RemoteCodeError(who or str(directory), *remote, directory)
    from transformers import AutoTokenizer

    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True, config=_config_of(directory),
                                                      trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - transformers raises many kinds; every one means "no tokenizer here"
        return None
    return tokenizer if getattr(tokenizer, "backend_tokenizer", None) is not None else None


def _config_of(directory: Path) -> Any:
    """The model config the tokenizer loader wants, read without ever importing the model's own config code."""
    from transformers import AutoConfig, PretrainedConfig

    try:
        return AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
    except Exception:  # noqa: BLE001 - no config.json, an unknown model type or custom config code
        try:
            return PretrainedConfig.from_pretrained(str(directory))
        except Exception:  # noqa: BLE001 - transformers then works without one
            return None


def tokenizer_of(model: Any, trust_remote_code: bool = False) -> Any | None:
    """A model's tokenizer; for a stage output not written yet, the tokenizer its plan will write."""
    if getattr(model, "planned", False):
        plan = getattr(model.reader, "plan", None)
        if plan is None:
            return None
        if plan.vocab is not None:
            return plan.vocab.tokenizer
        return tokenizer_of(plan.donor, trust_remote_code)
    return load_tokenizer(model.directory, trust_remote_code, str(model.ref))


def _clone(tokenizer: Any, edit: Callable[[Path], None] | None = None) -> Any:
    """A fresh copy of ``tokenizer`` (saved and loaded again), optionally with its files edited in between.

    Loaded again by its own class, so a copy never resolves (or imports) a tokenizer class anew.
    """
    files = tempfile.TemporaryDirectory(prefix="mergehub-tokenizer-")
    with _quiet():
        tokenizer.save_pretrained(files.name)
        if edit is not None:
            edit(Path(files.name))
        clone = type(tokenizer).from_pretrained(files.name)
    # a tokenizer may read its files again when saved (a sentencepiece model): keep them while it lives
    clone._mergehub_files = files
    return clone


def strip_tokenizer(tokenizer: Any, limit: int | None, who: str) -> Any:
    """``tokenizer`` without the tokens whose id is ``limit`` or more (a copy when anything goes)."""
    if limit is None or max(tokenizer.get_vocab().values(), default=-1) < limit:
        return tokenizer

    def edit(directory: Path) -> None:
        path = directory / "tokenizer.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        _strip_model(data["model"], limit, who)
        data["added_tokens"] = [t for t in data.get("added_tokens") or [] if t["id"] < limit]
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():  # older tokenizer configs list the added tokens again
            config = json.loads(config_path.read_text(encoding="utf-8"))
            decoder = config.get("added_tokens_decoder")
            if isinstance(decoder, dict):
                config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < limit}
                config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")

    return _clone(tokenizer, edit)


def _strip_model(model: dict[str, Any], limit: int, who: str) -> None:
    kind = model.get("type")
    if kind == "Unigram":  # ids are positions in the list
        model["vocab"] = model["vocab"][:limit]
        if isinstance(model.get("unk_id"), int) and model["unk_id"] >= limit:
            model["unk_id"] = None
        return
    if kind not in ("BPE", "WordLevel", "WordPiece"):
        raise MergehubError(f"cannot remove the tokens beyond vocab_size ({limit}) from the {kind} tokenizer of {who}",
                            hint="use a model whose tokenizer fits its embedding as the base (base_model), or "
                                 "tokenizer_source: <model> to take a tokenizer unchanged")
    removed = {token for token, i in model["vocab"].items() if i >= limit}
    model["vocab"] = {token: i for token, i in model["vocab"].items() if i < limit}
    if kind == "BPE":
        def keep(merge: Any) -> bool:
            parts = merge.split(" ") if isinstance(merge, str) else list(merge)
            return not any(p in removed for p in parts) and "".join(parts) not in removed

        model["merges"] = [m for m in model.get("merges") or [] if keep(m)]


# -- building ------------------------------------------------------------------------------------
def _normal_tokens(tokenizer: Any) -> list[tuple[str, int]]:
    """The tokenizer model's own tokens (not added ones), in id order."""
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    return sorted(((t, i) for t, i in vocab.items() if t not in added), key=lambda item: item[1])


def union_tokenizer(base: Any, others: list[tuple[str, Any, int | None]], warn: Warn) -> Any:
    """``base`` plus the normal tokens, then the added tokens, of ``others`` (name, tokenizer, limit) it lacks."""
    from transformers import AddedToken

    out = _clone(base)
    present = set(out.get_vocab())
    normal: list[Any] = []
    added: list[Any] = []
    for name, tokenizer, limit in others:
        beyond = 0
        for token, i in _normal_tokens(tokenizer):
            if limit is not None and i >= limit:
                beyond += 1
            elif token not in present:
                present.add(token)
                normal.append(AddedToken(token, normalized=True, special=False))
        for i, info in sorted(tokenizer.added_tokens_decoder.items()):
            if limit is not None and i >= limit:
                beyond += 1
            elif info.content not in present:
                present.add(info.content)
                added.append(AddedToken(info.content, single_word=info.single_word, lstrip=info.lstrip,
                                        rstrip=info.rstrip, normalized=info.normalized, special=info.special))
        if beyond:
            warn(f"{beyond} token(s) of {name}'s tokenizer have ids at or above its vocab_size ({limit}): "
                 "they have no embedding row and are not added (padding?)")
    with _quiet():
        out.add_tokens(normal)
        out.add_tokens(added)
    return out


def build_output_vocab(settings: TokenizerSettings, models: list[Any], warn: Warn,
                       trust_remote_code: bool = False) -> OutputVocab:
    """The output tokenizer and, for every model, the map output id -> its id (-1: it lacks the token).

    ``models`` are the plan's models, the tokenizer base first. ``trust_remote_code`` lets transformers
    import tokenizer classes shipped with the models (``--trust-remote-code``).
    """
    base = models[0]
    limits = [vocab_size_of(m.config) for m in models]
    base_tok = tokenizer_of(base, trust_remote_code)
    if base_tok is None:
        raise MergehubError(f"cannot load a fast tokenizer from {base.directory} ({base.ref}), the tokenizer base",
                            hint="the first model (or base_model) supplies the tokenizer: make it a model with "
                                 "tokenizer.json, or name another with tokenizer_source: <model>")
    stripped = strip_tokenizer(base_tok, limits[0], str(base.ref))
    loaded: list[Any] = [stripped]
    for model in models[1:]:
        try:
            tokenizer = tokenizer_of(model, trust_remote_code)
        except RemoteCodeError as exc:  # §1.7: a tokenizer that does not load is taken to be the base's
            tokenizer = None
            warn(f"the tokenizer of {model.ref} needs remote code ({exc.file} maps AutoTokenizer to {exc.reference}), "
                 f"which only --trust-remote-code allows; assuming it is the same as {base.ref}'s")
        else:
            if tokenizer is None:
                warn(f"cannot load the tokenizer of {model.ref}; assuming it is the same as {base.ref}'s")
        loaded.append(tokenizer)
    out = _source_tokenizer(settings, models, loaded, limits, warn, trust_remote_code)
    missing = [t for t in settings.tokens if t not in out.get_vocab()]
    if missing:
        with _quiet():
            out.add_tokens(missing)
    vocab = out.get_vocab()
    real = max(len(vocab), max(vocab.values(), default=-1) + 1)
    tokens: list[str | None] = [None] * real
    for token, i in vocab.items():
        tokens[i] = token
    multiple = settings.pad_to_multiple_of or 1
    size = -(-real // multiple) * multiple
    vocabs = [(t if t is not None else stripped).get_vocab() for t in loaded]
    permutations = [_permutation(tokens, v, limit) for v, limit in zip(vocabs, limits)]
    return OutputVocab(out, tokens, size, vocabs, permutations, settings)


def _source_tokenizer(settings: TokenizerSettings, models: list[Any], loaded: list[Any], limits: list[int | None],
                      warn: Warn, trust_remote_code: bool = False) -> Any:
    if settings.source == "base":
        return _clone(loaded[0])
    if settings.source == "union":
        others = [(str(m.ref), t, limit) for m, t, limit in zip(models[1:], loaded[1:], limits[1:]) if t is not None]
        return union_tokenizer(loaded[0], others, warn)
    ref: ModelRef = settings.source  # type: ignore[assignment]
    merged = next((m for m in models if m.ref == ref), None)
    tokenizer = tokenizer_of(merged, trust_remote_code) if merged is not None else _tokenizer_at(ref, trust_remote_code)
    if tokenizer is None:
        raise MergehubError(f"cannot load a fast tokenizer from {ref}, the tokenizer source",
                            hint="name a model that has tokenizer.json, or use tokenizer_source: base / union")
    return _clone(tokenizer)


def _tokenizer_at(ref: ModelRef, trust_remote_code: bool = False) -> Any | None:
    """The tokenizer of a model the recipe does not merge (only its tokenizer is used)."""
    from mergehub.models.loader import locate

    return load_tokenizer(locate(ModelRef(ref.path, ref.revision)), trust_remote_code, str(ref))


def _permutation(tokens: list[str | None], vocab: dict[str, int], limit: int | None) -> array:
    """Output id -> the model's id; -1 where it lacks the token or its id has no row (at or above vocab_size)."""
    ceiling = limit if limit is not None else len(vocab)
    ids = (vocab.get(t, -1) if t is not None else -1 for t in tokens)
    return array("q", (i if i < ceiling else -1 for i in ids))


# -- writing -------------------------------------------------------------------------------------
def save_tokenizer(tokenizer: Any, directory: Path, template: str | None) -> None:
    """save_pretrained; a template goes to chat_template.jinja, where transformers reads it."""
    if template is not None:
        tokenizer.chat_template = template
    with _quiet():
        tokenizer.save_pretrained(str(directory))
    _drop_embedded_template(directory)


def reserialize(donor: Path, directory: Path, template: str | None, trust_remote_code: bool = False) -> bool:
    """Load the donor's tokenizer and save it again with ``template``; False when it has none that loads
    (one that needs remote code without ``trust_remote_code`` included: its files are copied instead)."""
    try:
        tokenizer = load_tokenizer(donor, trust_remote_code)
    except RemoteCodeError:
        return False
    if tokenizer is None:
        return False
    save_tokenizer(tokenizer, directory, template)
    return True


def write_template(directory: Path, template: str) -> None:
    (directory / "chat_template.jinja").write_text(template, encoding="utf-8")
    _drop_embedded_template(directory)


def _drop_embedded_template(directory: Path) -> None:
    """chat_template.jinja must be the only template (an embedded one would disagree with it)."""
    path = directory / "tokenizer_config.json"
    if not (directory / "chat_template.jinja").is_file() or not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.pop("chat_template", None) is not None:
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
