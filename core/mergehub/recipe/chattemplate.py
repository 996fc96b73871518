"""``chat_template:`` values a recipe may give: ``auto``, a built-in template's name, or Jinja text.

Checked while the recipe is read (no tokenizer is loaded for that); the tokenizer stage reads the
built-in templates' text from here.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from mergehub.common.errors import did_you_mean

#: A value shorter than this, without newline or '{', may name a built-in template (mergekit's rule).
NAME_LIMIT = 256
#: A literal template must be at least this long and contain '{'.
LITERAL_MINIMUM = 20


def _templates() -> Any:
    return resources.files("mergehub.recipe").joinpath("chat_templates")


def builtin_template_names() -> list[str]:
    return sorted(p.name.removesuffix(".jinja") for p in _templates().iterdir() if p.name.endswith(".jinja"))


def builtin_template(value: str) -> str | None:
    """The text of the built-in template ``value`` names, or None when it names none."""
    if len(value) >= NAME_LIMIT or "\n" in value or "{" in value or value not in builtin_template_names():
        return None
    return _templates().joinpath(f"{value}.jinja").read_text(encoding="utf-8")


def template_problem(value: str) -> str | None:
    """Why ``value`` is not a usable ``chat_template`` (None when it is)."""
    if value == "auto" or builtin_template(value) is not None:
        return None
    if len(value) >= LITERAL_MINIMUM and "{" in value:
        return None
    suggestion = did_you_mean(value, builtin_template_names() + ["auto"]) if "{" not in value else None
    return (f"chat_template {value!r} is neither auto, a built-in template nor a Jinja template"
            + (f" ({suggestion})" if suggestion else ""))
