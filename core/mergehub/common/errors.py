"""One error type for everything a user can get wrong.

The CLI renders a :class:`MergehubError` as *what* went wrong, *where* (file:line and a
key path such as ``slices[1].sources[0].layer_range``) and *how to fix it*; only
``--debug`` shows a traceback. Anything else that escapes is a bug in mergehub.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located as precisely as we can."""

    message: str
    path: str = ""  # key path, e.g. "slices[1].sources[0].layer_range"
    line: int | None = None  # 1-based line in the recipe file
    hint: str | None = None

    def where(self, file: str | None) -> str:
        place = file or "<recipe>"
        if self.line is not None:
            place = f"{place}:{self.line}"
        return f"{place} {self.path}".strip() if self.path else place


class MergehubError(Exception):
    """A mistake the user can fix; never shown with a traceback unless --debug."""

    def __init__(self, message: str, *, hint: str | None = None, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location


class RecipeError(MergehubError):
    """Every problem found in a recipe, reported together."""

    def __init__(self, problems: list[Problem], file: str | None = None):
        self.problems = problems
        self.file = file
        count = len(problems)
        summary = f"{count} problem{'s' if count != 1 else ''} in recipe {file or ''}".strip()
        super().__init__(summary)


class PluginError(MergehubError):
    """A plugin is broken or two plugins collide."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean …?' suffix for a misspelt name, or None when nothing is close.

    Compared without case, so ``TIES`` or ``Linear`` find ``ties`` and ``linear``.
    """
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"did you mean '{by_lower[close[0]]}'?" if close else None


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> tuple[str, str]:
    """Message and hint for a name nobody provides, listing what is installed."""
    choices = sorted(choices)
    suggestion = did_you_mean(name, choices)
    message = f"unknown {kind} '{name}'" + (f" ({suggestion})" if suggestion else "")
    installed = ", ".join(choices) if choices else "none"
    hint = f"installed {kind}s: {installed}. Install a plugin that provides '{name}' or fix the name."
    return message, hint
