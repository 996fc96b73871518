"""Check resolved parameter values against the method's schema (cached per value).

JSON Schema counts ``3.0`` as an integer, so a value that passed validation may still be a float;
:meth:`ParamChecker.coerce` turns it into the ``int`` the plugin was promised. ``2.5`` (a typo, or a
gradient interpolated between whole numbers) is refused by validation instead.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from mergehub.plugin.specs import MethodSpec


class ParamChecker:
    """Why a resolved value is invalid (e.g. an interpolated 2.5 for an integer), or None."""

    def __init__(self, method: MethodSpec):
        props = method.parameters.get("properties", {})
        self.validators = {
            name: jsonschema.Draft202012Validator({k: v for k, v in prop.items() if not k.startswith("x-")})
            for name, prop in props.items()
        }
        self.integers = {name for name, prop in props.items() if _is_integer_type(prop.get("type"))}
        self.cache: dict[tuple[str, str], str | None] = {}

    def check(self, name: str, value: Any) -> str | None:
        key = (name, repr(value))
        if key not in self.cache:
            error = next(iter(self.validators[name].iter_errors(value)), None) if name in self.validators else None
            self.cache[key] = None if error is None else f"{value!r} is not valid: {error.message}"
        return self.cache[key]

    def coerce(self, name: str, value: Any) -> Any:
        """A valid value as the plugin sees it: a whole float becomes an int for an ``integer`` parameter."""
        if name in self.integers and isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def _is_integer_type(declared: Any) -> bool:
    """``"integer"`` alone: a parameter typed ``["integer", "string"]`` keeps what it was given."""
    return declared == "integer"
