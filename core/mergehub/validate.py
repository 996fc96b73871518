"""Turn JSON Schema violations into located, actionable problems.

jsonschema's raw messages ("Additional properties are not allowed ('wieght' was
unexpected)") are correct but unhelpful; here each becomes a :class:`Problem` with
the key path, the recipe line and, for unknown names, a "did you mean".
"""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from mergehub.errors import Problem, did_you_mean
from mergehub.yamlsource import Document, PathKey, format_path


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
        return [_problem(document, path, f"missing required key '{missing}'")]
    if error.validator in ("anyOf", "oneOf") and error.context:
        return [_problem(document, path, _value_message(_closest(error), path))]
    return [_problem(document, path, _value_message(error, path))]


def _closest(error: ValidationError) -> ValidationError:
    """Of an anyOf's failed branches, the one meant for a value of this type.

    ``t: -1`` fails the number branch on its minimum and the list branch on its type; the
    useful message is the minimum, not "expected array".
    """
    relevant = [e for e in error.context if e.validator != "type"]
    return best_match(relevant or error.context)


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
