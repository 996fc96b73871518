"""Read YAML recipes safely while remembering the line of every key.

``yaml.safe_load`` gives the data; composing the same text gives nodes with
positions, from which we build a map ``key path -> line`` so that every problem can
be reported as ``file:line``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergehub.common.errors import MergehubError

PathKey = tuple[str | int, ...]


class RecipeLoader(yaml.SafeLoader):
    """The safe loader, also reading ``1e-4`` as a number (YAML 1.1 wants ``1.0e-4``), as mergekit does."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Document:
    """One YAML document: its data and where each key path starts."""

    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)
    file: str | None = None
    text: str = ""  # this document's own text (the whole file for a single document)
    number: int = 1  # 1-based position in a multi-document file

    def line_of(self, path: PathKey) -> int | None:
        """Line of the deepest known prefix of ``path``."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def format_path(path: PathKey) -> str:
    """``("slices", 1, "sources", 0)`` -> ``slices[1].sources[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _index(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _index(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), lines)


#: Far beyond any real recipe, far below what would make validating it take minutes or overflow the stack.
MAX_VALUES = 100_000
MAX_DEPTH = 50


def _check_shape(node: yaml.Node, file: str | None) -> None:
    """Refuse a document that contains itself through an alias (``a: &x [*x]``), that its aliases expand
    past MAX_VALUES values (a "billion laughs"), or that nests deeper than MAX_DEPTH."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def refuse(message: str, at: yaml.Node, hint: str) -> MergehubError:
        return MergehubError(message, location=f"{file or '<recipe>'}:{at.start_mark.line + 1}", hint=hint)

    def size(n: yaml.Node, depth: int) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise refuse("the recipe contains itself: an alias (*name) inside a value refers back to that value",
                         n, "reuse an anchor (&name) only outside the value it names")
        if depth > MAX_DEPTH:
            raise refuse(f"the recipe nests more than {MAX_DEPTH} levels deep", n, "no recipe needs this: check the brackets")
        active.add(id(n))
        if isinstance(n, yaml.MappingNode):
            children = [part for pair in n.value for part in pair]
        else:
            children = n.value if isinstance(n, yaml.SequenceNode) else []
        total = 1 + sum(size(child, depth + 1) for child in children)
        active.discard(id(n))
        if total > MAX_VALUES:
            raise refuse(f"the recipe holds more than {MAX_VALUES} values once its aliases (*name) are expanded", n,
                         "write the recipe out without nested aliases")
        sizes[id(n)] = total
        return total

    size(node, 0)


def parse_documents(text: str, file: str | None = None) -> list[Document]:
    """All YAML documents of ``text``; a syntax error becomes a located MergehubError."""
    try:
        nodes = list(yaml.compose_all(text, Loader=RecipeLoader))
        for node in nodes:
            _check_shape(node, file)
        datas = list(yaml.load_all(text, Loader=RecipeLoader))  # noqa: S506 (a SafeLoader)
    except RecursionError:  # PyYAML composes nested values recursively
        raise MergehubError(f"the recipe nests too deeply to read (more than {MAX_DEPTH} levels)", location=file,
                            hint="no recipe needs this: check the brackets") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file or '<recipe>'}:{mark.line + 1}:{mark.column + 1}" if mark else file
        message, hint = _syntax_error(exc)
        raise MergehubError(f"the recipe is not valid YAML: {message}", location=where, hint=hint) from exc
    documents = []
    for node, data in zip(nodes, datas):
        if data is None:
            continue
        lines: dict[PathKey, int] = {}
        _index(node, (), lines)
        own = text[node.start_mark.index : node.end_mark.index].rstrip() + "\n"
        documents.append(Document(data=data, lines=lines, file=file, text=own, number=len(documents) + 1))
    if len(documents) == 1:
        documents[0].text = text
    return documents


#: What PyYAML was reading when it gave up -> what the user has to close.
_OPENERS = {"flow sequence": "the [", "flow mapping": "the {", "quoted scalar": "the quote"}


def _syntax_error(exc: yaml.YAMLError) -> tuple[str, str]:
    """PyYAML's complaint in words a recipe author can act on, and how to fix it.

    An unclosed bracket or quote is only noticed lines later, so the line where it was opened
    (PyYAML's context mark) is named too.
    """
    problem = getattr(exc, "problem", None) or str(exc)
    context, opened = getattr(exc, "context", None) or "", getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.constructor.ConstructorError) and "for the tag" in problem:  # !!python/… and friends
        tag = problem.split("for the tag", 1)[1].strip()
        return (f"the tag {tag} is not allowed: a recipe is plain data, and mergehub never builds objects from YAML",
                "remove the tag and write the value as a plain string, number, list or mapping")
    if "'\\t'" in problem:
        return ("a tab character, which YAML does not allow for indentation",
                "indent with spaces only: replace the tab on that line with spaces")
    for kind, what in _OPENERS.items():
        if kind in context and opened is not None:
            line = opened.line + 1
            commas = ", and separate its items with commas" if kind.startswith("flow") else ""
            return (f"{problem} ({what} opened at line {line}, column {opened.column + 1} is never closed)",
                    f"close {what} opened at line {line}{commas}")
    return problem, "check the indentation and quoting on that line (YAML uses spaces, not tabs)"


def read_recipe_file(path: str | Path) -> list[Document]:
    """Read a recipe file, turning an unreadable file into a clear error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MergehubError(f"recipe file not found: {path}", hint="check the path you passed") from None
    except IsADirectoryError:
        raise MergehubError(f"the recipe {path} is a directory, not a YAML file",
                            hint="pass the recipe file itself, e.g. recipe.yml inside that directory") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise MergehubError(f"the recipe {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line})",
                            location=f"{path}:{line}", hint="save the file with UTF-8 encoding") from None
    except OSError as exc:
        raise MergehubError(f"cannot read recipe file {path}: {exc.strerror or exc}",
                            hint="check that the file exists and that you may read it") from exc
    documents = parse_documents(text, str(path))
    if not documents:
        raise MergehubError(f"the recipe {path} is empty", hint="write a merge_method and models or slices")
    return documents
