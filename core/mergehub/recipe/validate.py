"""Turn JSON Schema violations into located, actionable problems.

jsonschema's raw messages ("Additional properties are not allowed ('wieght' was
unexpected)") are correct but unhelpful; here each becomes a :class:`Problem` with
the key path, the recipe line and, for unknown names, a "did you mean".
"""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from mergehub.common.errors import Problem, did_you_mean
from mergehub.recipe.yamlsource import Document, PathKey, format_path


def schema_problems(document: Document, schema: dict[str, Any]) -> list[Problem]:
    """Every violation of ``schema`` in ``document``, one Problem each."""
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(document.data), key=lambda e: [str(p) for p in e.absolute_path]):
        problems.extend(_translate(error, document))
    return problems


def _problem(document: Document, path: PathKey, message: str, hint: str | None = None) -> Problem:
    return Problem(message=message, path=format_path(path), line=document.line_of(path), hint=hint)


def _translate(error: ValidationError, document: Document) -> list[Problem]:
    path: PathKey = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        return [_unknown_key(document, path, str(key), allowed) for key in extra]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [_problem(document, path, f"missing required key '{missing}'", _REQUIRED_HINTS.get(missing))]
    if error.validator in ("anyOf", "oneOf") and error.context:
        return [problem for closest in _closest(error) for problem in _translate(closest, document)]
    return [_problem(document, path, _value_message(error, path), _value_hint(error, path))]


def _closest(error: ValidationError) -> list[ValidationError]:
    """Of an anyOf's failed branches, the errors of the one meant for a value of this shape.

    The branch that got deepest into the value wins (``[1, 'abc']`` is a gradient with a bad
    item, not a bad scalar), then the one with fewest errors, then one that failed on more than
    its type: ``t: -1`` fails the number branch on its minimum and the list branch on its type,
    and the useful message is the minimum, not "expected array".
    """
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)

    def fit(errors: list[ValidationError]) -> tuple[int, int, bool]:
        depth = max(len(e.absolute_path) for e in errors)
        return depth, -len(errors), not all(e.validator == "type" for e in errors)

    return max(branches.values(), key=fit)


def _unknown_key(document: Document, path: PathKey, key: str, allowed: list[str]) -> Problem:
    is_param = bool(path) and path[-1] == "parameters"
    kind = "parameter" if is_param else "key"
    message = f"unknown {kind} '{key}'"
    suggestion = did_you_mean(key, allowed)
    if suggestion:
        message += f" ({suggestion})"
    if key == "modules":
        hint = "multi-module recipes (modules:) are not supported yet; use models: or slices:"
    elif allowed:
        hint = f"allowed {kind}s here: {', '.join(allowed)}"
    else:
        hint = "this method takes no parameters"
    return _problem(document, path + (key,), message, hint)


def _value_message(error: ValidationError, path: PathKey) -> str:
    value = error.instance
    shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else type(value).__name__
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{shown} is not a valid value here: expected {expected}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{shown} is out of range ({error.validator} {error.validator_value})"
    if error.validator in ("minItems", "maxItems") and path and path[-1] == "layer_range":
        return f"layer_range must be [start, end], got {shown}"
    if error.validator == "enum":
        return f"{shown} is not one of {', '.join(map(repr, error.validator_value))}"
    return error.message


#: How to add a key the schema requires.
_REQUIRED_HINTS = {
    "value": "a filtered parameter is written {filter: <part of a tensor name>, value: …}",
    "model": "add model: <a local directory or a Hugging Face id>",
    "sources": "add sources: a list of {model: …, layer_range: [start, end]}",
    "layer_range": "add layer_range: [start, end]",
    "merge_method": "add merge_method: <a method name>; mergehub plugins lists the installed ones",
}
#: How to write a value of each JSON type in a recipe.
_EXAMPLES = {"number": "a number such as 0.5 (without quotes)", "integer": "a whole number such as 3",
             "boolean": "true or false", "string": "a text value", "array": "a list, such as [a, b]",
             "object": "a mapping of keys", "null": "nothing"}
_RANGE = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _value_hint(error: ValidationError, path: PathKey) -> str | None:
    """How to fix a value of the wrong type or out of range."""
    in_range_of = len(path) >= 2 and path[-2] == "layer_range"
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        hint = "write " + " or ".join(_EXAMPLES.get(name, name) for name in expected)
        if len(path) >= 2 and path[-2] == "parameters":
            hint += "; a parameter can also be a list of values (a gradient over the layers) or {filter: …, value: …}"
        return hint
    if error.validator in _RANGE:
        schema = error.schema
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if in_range_of:
            return "layer indices count from 0: [0, 4] takes the first four layers"
        if low is not None and high is not None:
            return f"use a value from {low} to {high}"
        return f"use a value of at least {low}" if low is not None else f"use a value of at most {high}"
    if error.validator in ("minItems", "maxItems") and path and path[-1] == "layer_range":
        return "write [start, end], e.g. [0, 4] for layers 0 to 3 (the end is not included)"
    return None
