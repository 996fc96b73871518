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

from mergehub.errors import MergehubError

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


def parse_documents(text: str, file: str | None = None) -> list[Document]:
    """All YAML documents of ``text``; a syntax error becomes a located MergehubError."""
    try:
        nodes = list(yaml.compose_all(text, Loader=RecipeLoader))
        datas = list(yaml.load_all(text, Loader=RecipeLoader))  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file or '<recipe>'}:{mark.line + 1}:{mark.column + 1}" if mark else file
        problem = getattr(exc, "problem", None) or str(exc)
        raise MergehubError(
            f"the recipe is not valid YAML: {problem}",
            location=where,
            hint="check the indentation and quoting on that line (YAML uses spaces, not tabs)",
        ) from exc
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


def read_recipe_file(path: str | Path) -> list[Document]:
    """Read a recipe file, turning an unreadable file into a clear error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MergehubError(f"recipe file not found: {path}", hint="check the path you passed") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MergehubError(f"cannot read recipe file {path}: {exc}") from exc
    documents = parse_documents(text, str(path))
    if not documents:
        raise MergehubError(f"the recipe {path} is empty", hint="write a merge_method and models or slices")
    return documents
