"""Check resolved parameter values against the method's schema (cached per value)."""

from __future__ import annotations

from typing import Any

import jsonschema

from mergehub.specs import MethodSpec


class ParamChecker:
    """Why a resolved value is invalid (e.g. an interpolated 2.5 for an integer), or None."""

    def __init__(self, method: MethodSpec):
        props = method.parameters.get("properties", {})
        self.validators = {
            name: jsonschema.Draft202012Validator({k: v for k, v in prop.items() if not k.startswith("x-")})
            for name, prop in props.items()
        }
        self.cache: dict[tuple[str, str], str | None] = {}

    def check(self, name: str, value: Any) -> str | None:
        key = (name, repr(value))
        if key not in self.cache:
            error = next(iter(self.validators[name].iter_errors(value)), None) if name in self.validators else None
            self.cache[key] = None if error is None else f"{value!r} is not valid: {error.message}"
        return self.cache[key]
