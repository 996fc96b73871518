"""Vocabulary alignment: every vocabulary-indexed tensor rebuilt with the output tokenizer's rows.

Planned once per output tensor (:func:`plan_rows`, no tensor data, no torch), then executed block by
block (:func:`read_aligned`), reading only the model rows a block needs. mergekit's rules (§1.7):

* a model that has a token, not marked ``force``, keeps its own row;
* otherwise the row is a *default*: the explicit ``tokens:`` source (a model's row of the token, a
  named or numbered row of a model, or zeros); without one, the only model that has the token, else
  the base model's row, else the mean of the rows of the models that have it; nobody: zeros;
* rows past the tokenizer (``pad_to_multiple_of``) are the mean of the model's aligned real rows.

Every output row is computed from its own source rows alone, and the padding mean adds rows in
order whatever the blocks, so blocks and whole reads give the same bytes.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mergehub.common.errors import MergehubError
from mergehub.recipe.config import ModelRef, TokenizerSettings, TokenSetting

if TYPE_CHECKING:
    import torch

#: (input index, row) pairs averaged into a default row; empty means zeros.
Sources = tuple[tuple[int, int], ...]


class TokenError(MergehubError):
    """A ``tokenizer.tokens`` entry that cannot be honoured; ``path`` is its key path in the recipe."""

    def __init__(self, message: str, path: tuple, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.path = path


@dataclass
class OutputVocab:
    """The output tokenizer and each plan model's place in it."""

    tokenizer: Any  # a transformers fast tokenizer, saved into the output
    tokens: list[str | None]  # output id -> token (None: an id no token has)
    size: int  # rows of every vocabulary tensor: len(tokens) rounded up to pad_to_multiple_of
    vocabs: list[dict[str, int]]  # per plan model: token -> its id (the base's when its tokenizer failed to load)
    permutations: list[array]  # per plan model: output id -> its row, -1 when it has none
    settings: TokenizerSettings

    @property
    def real(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class VocabRows:
    """Where each row of one output tensor's aligned inputs comes from."""

    real: int  # rows that are tokens; the rest up to ``size`` are padding
    size: int
    own: tuple[array, ...]  # per input: output row -> its own row, -1 when it takes the default row
    defaults: dict[int, Sources] = field(default_factory=dict)  # output row -> the rows averaged into its default

    @property
    def padded(self) -> bool:
        return self.size > self.real


@dataclass
class RowsPlan:
    """What :func:`plan_rows` needs to know about one output tensor."""

    models: list[int]  # per input: its plan model index
    rows: list[int]  # per input: rows of its tensor
    base: int | None  # input index of the base model, if it is an input
    refs: list[ModelRef]  # per input: its model reference
    unknown: set[str] = field(default_factory=set)  # out: tokens no model has (zero rows)


def plan_rows(vocab: OutputVocab, plan: RowsPlan) -> VocabRows:
    """The row sources of one tensor; a ``tokens:`` entry that cannot be honoured raises :class:`TokenError`."""
    have = [array("q", (r if r < rows else -1 for r in vocab.permutations[m])) for m, rows in zip(plan.models, plan.rows)]
    own = [array("q", a) for a in have]
    settings = vocab.settings.tokens
    index = {t: i for i, t in enumerate(vocab.tokens) if t in settings}
    for token, setting in settings.items():
        if setting.force and token in index:
            for a in own:
                a[index[token]] = -1
    defaults: dict[int, Sources] = {}
    for r in range(vocab.real):
        if all(a[r] >= 0 for a in own):
            continue
        token = vocab.tokens[r]
        setting = settings.get(token) if token is not None else None
        if setting is not None and setting.source is not None:
            defaults[r] = _explicit(vocab, plan, have, r, token, setting)  # type: ignore[arg-type]
            continue
        present = tuple((j, a[r]) for j, a in enumerate(have) if a[r] >= 0)
        if len(present) > 1 and plan.base is not None and have[plan.base][r] >= 0:
            present = ((plan.base, have[plan.base][r]),)
        if not present and token is not None:
            plan.unknown.add(token)
        defaults[r] = present
    return VocabRows(vocab.real, vocab.size, tuple(own), defaults)


def _explicit(vocab: OutputVocab, plan: RowsPlan, have: list[array], r: int, token: str, setting: TokenSetting) -> Sources:
    source = setting.source
    assert source is not None
    path = setting.path + ("source",)
    if source.kind == "zero":
        return ()
    if source.model not in plan.refs:
        inputs = ", ".join(str(ref) for ref in plan.refs)
        raise TokenError(f"the source of token {token!r}, {source.model}, is not an input of the vocabulary tensors "
                         f"({inputs})", path, "take the row from one of the models merged into them")
    j = plan.refs.index(source.model)
    if source.kind == "model":
        if have[j][r] < 0:
            raise TokenError(f"token {token!r} is not in the vocabulary of {source.model}, its source", path,
                             f"choose a model that has {token!r}, or {{kind: model_token, model: …, token: …}} "
                             "to take another token's row")
        return ((j, have[j][r]),)
    row = source.token_id
    if row is None:
        row = vocab.vocabs[plan.models[j]].get(source.token or "")
        if row is None:
            raise TokenError(f"token {source.token!r} (the source of {token!r}) is not in the vocabulary of "
                             f"{source.model}", path, "check the spelling of the token as the model's tokenizer writes it")
    if not 0 <= row < plan.rows[j]:
        raise TokenError(f"row {row} (the source of token {token!r}) is outside {source.model}'s "
                         f"{plan.rows[j]} vocabulary rows", path, f"use a token_id below {plan.rows[j]}")
    return ((j, row),)


def unknown_tokens_warning(tokens: set[str]) -> list[str]:
    if not tokens:
        return []
    shown = ", ".join(repr(t) for t in sorted(tokens)[:5]) + (" …" if len(tokens) > 5 else "")
    return [f"{len(tokens)} token(s) of the output tokenizer are in no model, so their embedding rows are zeros: {shown}"]


def vocab_size_of(config: dict[str, Any]) -> int | None:
    """The config's vocab_size (top level, else text_config): ids at or above it have no embedding row."""
    for value in (config.get("vocab_size"), (config.get("text_config") or {}).get("vocab_size")):
        if isinstance(value, int):
            return value
    return None


def set_vocab_size(config: dict[str, Any], size: int) -> None:
    """Write ``size`` where the config keeps its vocab_size (text_config for nested configs)."""
    text = config.get("text_config")
    if "vocab_size" not in config and isinstance(text, dict) and "vocab_size" in text:
        text["vocab_size"] = size
    else:
        config["vocab_size"] = size


def inferred_vocab_axis(shapes: list[tuple[int, ...]], configs: list[dict[str, Any]]) -> int | None:
    """Without an architecture definition: a non-layer tensor whose rows are every model's vocab_size is one."""
    fits = all(shape and shape[0] == vocab_size_of(config) for shape, config in zip(shapes, configs))
    return 0 if fits else None


# -- execution -----------------------------------------------------------------------------------
def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted distinct rows as half-open runs of consecutive rows."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


def _fetch(reader: Any, name: str, rows: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The needed rows of one tensor (sorted ids and their data), read as contiguous runs."""
    import torch

    ordered = sorted(rows)
    read_rows = getattr(reader, "read_rows", None)
    if read_rows is None:  # a backend without row reads: one whole read, then only the rows are kept
        whole = reader.read(name)
        data = whole[torch.tensor(ordered, dtype=torch.long)] if ordered else whole[:0]
    else:
        parts = [read_rows(name, a, b) for a, b in _runs(ordered)]
        data = torch.cat(parts) if parts else reader.read_rows(name, 0, 0)
    return torch.tensor(ordered, dtype=torch.long), data


def read_aligned(rows: VocabRows, readers: list[Any], names: list[str], targets: list[torch.dtype],
                 default_dtype: torch.dtype, start: int, stop: int,
                 padding: Callable[[], list[torch.Tensor]] | None) -> list[torch.Tensor]:
    """Output rows ``start:stop`` of every input's aligned tensor, input ``j`` in ``targets[j]``.

    Default rows are summed in ``default_dtype`` in input order and divided by their count, as mergekit
    does; ``padding`` gives each input's mean row when the block reaches past the tokens.
    """
    import torch

    real_stop = min(stop, rows.real)
    needed: list[set[int]] = [set() for _ in readers]
    for j, own in enumerate(rows.own):
        needed[j].update(r for r in own[start:real_stop] if r >= 0)
    defaults = {r: rows.defaults[r] for r in range(start, real_stop) if r in rows.defaults}
    for sources in defaults.values():
        for j, r in sources:
            needed[j].add(r)
    fetched = [_fetch(reader, name, need) for reader, name, need in zip(readers, names, needed)]
    tail = tuple(fetched[0][1].shape[1:])
    default_rows = {r: _default_row(sources, fetched, tail, default_dtype) for r, sources in defaults.items()}
    means = padding() if padding is not None and stop > rows.real else None
    blocks = []
    for j, (ids, data) in enumerate(fetched):
        block = torch.empty((stop - start, *tail), dtype=targets[j])
        own = torch.tensor(rows.own[j][start:real_stop], dtype=torch.long)
        mine = (own >= 0).nonzero().flatten()
        if len(mine):
            block[mine] = data[torch.searchsorted(ids, own[mine])].to(targets[j])
        for i in (own < 0).nonzero().flatten().tolist():
            block[i] = default_rows[start + i].to(targets[j])
        if means is not None:
            block[max(0, real_stop - start):] = means[j]
        blocks.append(block)
    return blocks


def _default_row(sources: Sources, fetched: list[tuple[torch.Tensor, torch.Tensor]], tail: tuple[int, ...],
                 dtype: torch.dtype) -> torch.Tensor:
    import torch

    def source_row(j: int, r: int) -> torch.Tensor:
        ids, data = fetched[j]
        return data[int(torch.searchsorted(ids, r))].to(dtype)

    if len(sources) == 1:  # a copy (adding it to zeros would turn -0.0 into 0.0)
        return source_row(*sources[0])
    row = torch.zeros(tail, dtype=dtype)
    for j, r in sources:
        row += source_row(j, r)
    return row / len(sources) if sources else row


def padding_means(blocks: Callable[[int, int], list[torch.Tensor]], ranges: list[tuple[int, int]],
                  targets: list[torch.dtype]) -> list[torch.Tensor]:
    """Each input's mean aligned real row, from a pass over ``ranges`` (blocks of the real rows).

    Rows are added one by one in float64, in row order, so the result does not depend on the blocks.
    """
    import torch

    sums: list[torch.Tensor] | None = None
    count = 0
    for start, stop in ranges:
        aligned = blocks(start, stop)
        if sums is None:
            sums = [torch.zeros(b.shape[1:], dtype=torch.float64) for b in aligned]
        for total, block in zip(sums, aligned):
            for row in block.double():
                total += row
        count += stop - start
    assert sums is not None
    return [(total / max(1, count)).to(dtype) for total, dtype in zip(sums, targets)]
