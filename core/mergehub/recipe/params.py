"""Resolve a parameter for one tensor: filters, gradients and precedence.

Semantics follow mergekit (see the reference): a filter is a plain substring of the
tensor name; a gradient list is interpolated at ``t = k / (n - 1)`` for output layer
``k`` of an ``n``-layer slice (``t = 1`` when ``n == 1``) and at ``t = 0`` for
tensors outside the layers; the first precedence level that yields a value wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

UNSET = object()


def layer_position(k: int, n: int) -> float:
    """Where output layer ``k`` of an ``n``-layer slice sits on a gradient, in [0, 1]."""
    return k / (n - 1) if n > 1 else 1.0


def interpolate(values: Any, t: float) -> Any:
    """A gradient's value at ``t``; scalars are returned as they are."""
    if not isinstance(values, list):
        return values
    m = len(values)
    if any(isinstance(v, (bool, str)) for v in values):
        return values[math.floor(t * (m - 1))]
    x = t * (m - 1)
    i0 = math.floor(x)
    i1 = min(m - 1, i0 + 1)
    f = x - i0
    return (1 - f) * values[i0] + f * values[i1]


def _matches(filter_: str | None, tensor_name: str) -> bool:
    return filter_ is None or filter_ == "*" or filter_ in tensor_name


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """One level's value for ``tensor_name``, or UNSET when nothing there applies."""
    if setting is None:
        return UNSET
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(c, dict) for c in setting):
        for conditional in setting:
            if _matches(conditional.get("filter"), tensor_name):
                return interpolate(conditional["value"], t)
        return UNSET
    if isinstance(setting, list) and not setting:
        return UNSET
    return interpolate(setting, t)


def resolve(name: str, levels: Sequence[dict[str, Any]], tensor_name: str, t: float) -> Any:
    """The first value any level gives ``name`` for this tensor, or UNSET."""
    for level in levels:
        value = evaluate(level.get(name), tensor_name, t)
        if value is not UNSET:
            return value
    return UNSET
