"""A recipe, checked and turned into plain objects the planner can use.

``load_recipe`` reports every problem it can see without opening a model (schema,
unknown method, conflicting keys, bad ranges, bad model references) in one
:class:`RecipeError`; the planner then adds the problems that need ``config.json``
files and tensor headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mergehub.common.errors import Problem, RecipeError
from mergehub.plugin.registry import Registry
from mergehub.plugin.specs import MethodSpec
from mergehub.recipe.schema import DTYPE_ALIASES, DTYPES, IGNORED_KEYS, recipe_schema
from mergehub.recipe.validate import schema_problems
from mergehub.recipe.yamlsource import Document, PathKey, format_path


@dataclass(frozen=True)
class ModelRef:
    """A model as written in a recipe: ``path[@revision][+lora[@revision]]``."""

    path: str
    revision: str | None = None
    lora: str | None = None
    override_architecture: str | None = None
    lora_revision: str | None = None

    @classmethod
    def parse(cls, value: Any) -> ModelRef:
        if isinstance(value, dict):
            model = value["model"]
            path, revision = (model["path"], model.get("revision")) if isinstance(model, dict) else _split_revision(model)
            lora = value.get("lora")
            lora_path, lora_revision = _lora_of(lora)
            return cls(path, revision, lora_path, value.get("override_architecture"), lora_revision)
        pieces = str(value).split("+")
        if len(pieces) > 2:
            raise ValueError(f"cannot parse model reference '{value}': more than one '+'")
        path, revision = _split_revision(pieces[0])
        lora_path, lora_revision = _split_revision(pieces[1]) if len(pieces) == 2 else (None, None)
        return cls(path, revision, lora_path, lora_revision=lora_revision)

    def __str__(self) -> str:
        text = self.path + (f"@{self.revision}" if self.revision else "")
        return text + (f"+{self.lora}" if self.lora else "") + (f"@{self.lora_revision}" if self.lora and self.lora_revision else "")


def _lora_of(lora: Any) -> tuple[str | None, str | None]:
    """The adapter path and revision of a dict-form reference's ``lora`` (a string or ``{path, revision}``)."""
    if not lora:
        return None, None
    if isinstance(lora, dict):
        if not lora.get("path"):
            raise ValueError("a 'lora' entry needs a 'path' (and optionally a 'revision')")
        return lora["path"], lora.get("revision")
    return _split_revision(str(lora))


@dataclass(frozen=True)
class TokenSource:
    """Where a token's default row comes from: a model's row of the same token (``model``), a named or
    numbered row of a model (``model_token``), or zeros (``zero``)."""

    kind: Literal["model", "model_token", "zero"]
    model: ModelRef | None = None
    token: str | None = None
    token_id: int | None = None

    @classmethod
    def parse(cls, value: Any) -> TokenSource:
        if isinstance(value, dict) and value.get("kind") == "zero":
            return cls("zero")
        if isinstance(value, dict) and value.get("kind") == "model_token":
            return cls("model_token", ModelRef.parse(value["model"]), value.get("token"), value.get("token_id"))
        return cls("model", ModelRef.parse(value))


@dataclass(frozen=True)
class TokenSetting:
    """One entry of ``tokenizer.tokens``: its default row and whether every model must take it."""

    source: TokenSource | None
    force: bool
    path: PathKey


@dataclass(frozen=True)
class TokenizerSettings:
    """``tokenizer_source: X`` or the ``tokenizer:`` block, in one form (the first is the second without tokens)."""

    source: ModelRef | Literal["union", "base"]
    tokens: dict[str, TokenSetting]
    pad_to_multiple_of: int | None
    path: PathKey  # ("tokenizer_source",) or ("tokenizer",): where problems are reported

    @property
    def source_path(self) -> PathKey:
        return self.path if self.path == ("tokenizer_source",) else self.path + ("source",)


def _split_revision(text: str) -> tuple[str, str | None]:
    parts = text.split("@")
    if len(parts) > 2:
        raise ValueError(f"cannot parse model reference '{text}': more than one '@'")
    return parts[0], (parts[1] if len(parts) == 2 else None)


@dataclass
class Source:
    model: ModelRef
    layer_range: tuple[int, int] | None  # None: the whole model (models: syntax)
    parameters: dict[str, Any]
    path: PathKey


@dataclass
class Slice:
    sources: list[Source]
    base_model: ModelRef | None
    parameters: dict[str, Any]
    path: PathKey


@dataclass
class Recipe:
    """A validated recipe. ``slices`` also holds the ``models:`` form as one slice."""

    method: MethodSpec
    syntax: Literal["models", "slices"]
    slices: list[Slice]
    base_model: ModelRef | None
    parameters: dict[str, Any]
    dtype: str | None
    out_dtype: str | None
    document: Document
    tokenizer_source: ModelRef | str | None = None
    chat_template: str | None = None
    tokenizer: TokenizerSettings | None = None
    name: str | None = None
    warnings: list[Problem] = field(default_factory=list)

    def problem(self, path: PathKey, message: str, hint: str | None = None) -> Problem:
        return Problem(message, format_path(path), self.document.line_of(path), hint)

    def models(self) -> list[ModelRef]:
        """Every referenced model once, base first when set, then in recipe order."""
        seen: list[ModelRef] = [self.base_model] if self.base_model else []
        for slice_ in self.slices:
            for model in [s.model for s in slice_.sources] + ([slice_.base_model] if slice_.base_model else []):
                if model not in seen:
                    seen.append(model)
        return seen


def normalize_dtype(value: str | None) -> str | None:
    """``torch.bfloat16``/``bf16`` -> ``bfloat16``; None stays None; unknown raises ValueError."""
    if value is None:
        return None
    name = value.removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(value)
    return name


def load_recipe(document: Document, registry: Registry) -> Recipe:
    """Validate one recipe document against the installed plugins."""
    data = document.data
    if not isinstance(data, dict):
        shown = repr(data) if len(repr(data)) <= 40 else repr(data)[:40] + "…"
        kind = "a list" if isinstance(data, list) else f"a single value, {shown}"
        hint = "write keys such as merge_method: linear and models: at the top level of the file"
        problem = Problem(f"a recipe must be a mapping of keys (merge_method:, models: …), but this one is {kind}",
                          line=document.line_of(()) or 1,
                          hint=hint + (", without a leading '- '" if isinstance(data, list) else ""))
        raise RecipeError([problem], document.file)
    method = _method_of(document, registry)
    problems = schema_problems(document, recipe_schema(method.spec if method.spec else None))
    problems += [p for p in [method.problem] if p]
    problems += _semantic_problems(document)
    if problems:
        raise RecipeError(_dedupe(problems), document.file)
    assert method.spec is not None
    return _build(document, method.spec)


@dataclass
class _MethodLookup:
    spec: MethodSpec | None
    problem: Problem | None


def _method_of(document: Document, registry: Registry) -> _MethodLookup:
    name = document.data.get("merge_method")
    if not isinstance(name, str):
        return _MethodLookup(None, None)  # the schema reports it
    if name in registry.methods:
        return _MethodLookup(registry.methods[name].spec, None)
    message, hint = registry.unknown_method(name)
    return _MethodLookup(None, Problem(message, "merge_method", document.line_of(("merge_method",)), hint))


def _semantic_problems(document: Document) -> list[Problem]:
    data = document.data
    found: list[Problem] = []

    def add(path: PathKey, message: str, hint: str | None = None) -> None:
        found.append(Problem(message, format_path(path), document.line_of(path), hint))

    forms = [k for k in ("models", "slices") if k in data]
    if len(forms) != 1 and "modules" not in data:
        add(("slices",) if len(forms) == 2 else (), "a recipe needs exactly one of 'models' or 'slices'" + (" (it has both)" if len(forms) == 2 else ""),
            "use models: to merge whole models, slices: to assemble layer ranges")
    if "tokenizer" in data and "tokenizer_source" in data:
        add(("tokenizer_source",), "'tokenizer_source' and 'tokenizer' cannot both be set", "keep only the tokenizer: block")
    for key in ("dtype", "out_dtype"):
        if isinstance(data.get(key), str):
            try:
                normalize_dtype(data[key])
            except ValueError:
                add((key,), f"unknown dtype '{data[key]}'", "use one of: " + ", ".join(DTYPES))
    for path, value in model_refs(data):
        try:
            ModelRef.parse(value)
        except (ValueError, KeyError, TypeError) as exc:
            add(path, str(exc), "write model references as path, path@revision or path+lora")
    found += _tokenizer_problems(document)
    for i, slice_ in enumerate(_list(data.get("slices"))):
        for j, source in enumerate(_list(slice_.get("sources")) if isinstance(slice_, dict) else []):
            rng = source.get("layer_range") if isinstance(source, dict) else None
            if isinstance(rng, list) and len(rng) == 2 and all(_whole(x) for x in rng) and rng[0] >= rng[1]:
                add(("slices", i, "sources", j, "layer_range"), f"layer_range {rng} is empty: start must be below end",
                    "ranges are half-open: [0, 4] takes layers 0, 1, 2 and 3")
    return found


def _tokenizer_problems(document: Document) -> list[Problem]:
    """Token entries naming both or neither of token/token_id, and chat templates that are neither a
    built-in name nor a plausible Jinja template (mergekit's rules, §1.8)."""
    from mergehub.recipe.chattemplate import builtin_template_names, template_problem

    data, found = document.data, []
    block = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else {}
    tokens = block.get("tokens") if isinstance(block.get("tokens"), dict) else {}
    for token, entry in tokens.items():
        source = entry.get("source") if isinstance(entry, dict) else None
        if isinstance(source, dict) and source.get("kind") == "model_token" and ("token" in source) == ("token_id" in source):
            path = ("tokenizer", "tokens", token, "source")
            found.append(Problem(f"the model_token source of '{token}' needs exactly one of 'token' and 'token_id'",
                                 format_path(path), document.line_of(path),
                                 "name the donor row by its token (token: '<s>') or by its id (token_id: 1)"))
    template = data.get("chat_template")
    if isinstance(template, str):
        problem = template_problem(template)
        if problem:
            found.append(Problem(problem, "chat_template", document.line_of(("chat_template",)),
                                 f"use auto, a built-in name ({', '.join(builtin_template_names())}), or the text "
                                 "of a Jinja template (at least 20 characters, with {{ … }} or {% … %})"))
    return found


def _tokenizer_refs(data: dict) -> list[tuple[PathKey, Any]]:
    """Model references in tokenizer_source and the tokenizer: block (not 'base' or 'union')."""
    refs: list[tuple[PathKey, Any]] = []
    if isinstance(data.get("tokenizer_source"), (str, dict)) and data["tokenizer_source"] not in ("base", "union"):
        refs.append((("tokenizer_source",), data["tokenizer_source"]))
    block = data.get("tokenizer")
    if not isinstance(block, dict):
        return refs
    if isinstance(block.get("source"), (str, dict)) and block["source"] not in ("base", "union"):
        refs.append((("tokenizer", "source"), block["source"]))
    for token, entry in (block.get("tokens") or {}).items() if isinstance(block.get("tokens"), dict) else []:
        source = entry.get("source") if isinstance(entry, dict) else None
        if isinstance(source, dict) and source.get("kind") == "model_token" and isinstance(source.get("model"), (str, dict)):
            refs.append((("tokenizer", "tokens", token, "source", "model"), source["model"]))
        elif isinstance(source, str) or (isinstance(source, dict) and "kind" not in source and "model" in source):
            refs.append((("tokenizer", "tokens", token, "source"), source))
    return refs


def model_refs(data: Any) -> list[tuple[PathKey, Any]]:
    """Every model reference in a recipe document with its key path; nothing when the document is not a mapping."""
    if not isinstance(data, dict):
        return []
    refs: list[tuple[PathKey, Any]] = _tokenizer_refs(data)
    if isinstance(data.get("base_model"), (str, dict)):
        refs.append((("base_model",), data["base_model"]))
    for i, entry in enumerate(_list(data.get("models"))):
        if isinstance(entry, dict) and isinstance(entry.get("model"), (str, dict)):
            refs.append((("models", i, "model"), entry["model"]))
    for i, slice_ in enumerate(_list(data.get("slices"))):
        if not isinstance(slice_, dict):
            continue
        if isinstance(slice_.get("base_model"), (str, dict)):
            refs.append((("slices", i, "base_model"), slice_["base_model"]))
        for j, source in enumerate(_list(slice_.get("sources"))):
            if isinstance(source, dict) and isinstance(source.get("model"), (str, dict)):
                refs.append((("slices", i, "sources", j, "model"), source["model"]))
    return refs


def _list(value: Any) -> list:
    """``value`` when it is a list, else nothing: these checks run beside the schema's, on data it may reject."""
    return value if isinstance(value, list) else []


def _whole(value: Any) -> bool:
    """An integer as JSON Schema sees one: ``3`` or ``3.0``, never ``True``."""
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return sorted(out, key=lambda p: (p.line or 0, p.path))


def _build(document: Document, method: MethodSpec) -> Recipe:
    data = document.data
    base = ModelRef.parse(data["base_model"]) if "base_model" in data else None
    if "models" in data:
        sources = [Source(ModelRef.parse(e["model"]), None, e.get("parameters") or {}, ("models", i))
                   for i, e in enumerate(data["models"])]
        slices = [Slice(sources, None, {}, ("models",))]
        syntax: Literal["models", "slices"] = "models"
    else:
        slices = [
            Slice(
                [Source(ModelRef.parse(s["model"]), tuple(int(x) for x in s["layer_range"]), s.get("parameters") or {}, ("slices", i, "sources", j))
                 for j, s in enumerate(sl["sources"])],
                ModelRef.parse(sl["base_model"]) if "base_model" in sl else None,
                sl.get("parameters") or {},
                ("slices", i),
            )
            for i, sl in enumerate(data["slices"])
        ]
        syntax = "slices"
    tokenizer = _tokenizer_settings(data)
    recipe = Recipe(
        method=method, syntax=syntax, slices=slices, base_model=base, parameters=data.get("parameters") or {},
        dtype=normalize_dtype(data.get("dtype")), out_dtype=normalize_dtype(data.get("out_dtype")), document=document,
        tokenizer_source=tokenizer.source if tokenizer else None, chat_template=data.get("chat_template"),
        name=data.get("name"), tokenizer=tokenizer,
    )
    ignored = method.ignored_params()
    for path, params in _parameter_blocks(data):
        for key in ignored.keys() & set(params):
            recipe.warnings.append(recipe.problem(path + (key,), f"'{key}' has no effect with {method.name}: {ignored[key]}"))
    for slice_ in slices:
        for source in slice_.sources:
            for key in [k for k in source.parameters if method.param_scope(k) == "shared"]:
                recipe.warnings.append(recipe.problem(source.path + ("parameters", key),
                                       f"'{key}' is shared by all models, so it has no effect on one model; "
                                       "set it on the slice or at the top level"))
    for i, sl in enumerate(data.get("slices") or []):
        for key in IGNORED_KEYS & set(sl):
            recipe.warnings.append(recipe.problem(("slices", i, key), f"'{key}' is accepted for compatibility but has no effect"))
    return recipe


def _tokenizer_settings(data: dict) -> TokenizerSettings | None:
    if "tokenizer_source" in data:
        block: dict[str, Any] = {"source": data["tokenizer_source"]}
        path: PathKey = ("tokenizer_source",)
    elif "tokenizer" in data:
        block, path = data["tokenizer"] or {}, ("tokenizer",)
    else:
        return None
    source = block.get("source", "union")
    tokens = {
        str(token): TokenSetting(TokenSource.parse(entry["source"]) if (entry or {}).get("source") is not None else None,
                                 bool((entry or {}).get("force", False)), path + ("tokens", token))
        for token, entry in (block.get("tokens") or {}).items()
    }
    return TokenizerSettings(source if source in ("base", "union") else ModelRef.parse(source), tokens,
                             block.get("pad_to_multiple_of"), path)


def _parameter_blocks(data: dict) -> list[tuple[PathKey, dict]]:
    """Every ``parameters:`` mapping of a recipe, with its key path."""
    blocks: list[tuple[PathKey, dict]] = [(("parameters",), data.get("parameters") or {})]
    for i, entry in enumerate(data.get("models") or []):
        blocks.append((("models", i, "parameters"), entry.get("parameters") or {}))
    for i, slice_ in enumerate(data.get("slices") or []):
        blocks.append((("slices", i, "parameters"), slice_.get("parameters") or {}))
        for j, source in enumerate(slice_.get("sources") or []):
            blocks.append((("slices", i, "sources", j, "parameters"), source.get("parameters") or {}))
    return blocks
