"""Check a slice against a method's input contract (base policy, number of inputs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergehub.recipe.config import ModelRef, Slice

if TYPE_CHECKING:
    from mergehub.plan.planner import Planner


def check_contract(planner: Planner, slice_: Slice, base: ModelRef | None, index: int) -> None:
    method = planner.recipe.method
    where = slice_.path
    refs = [s.model for s in slice_.sources]
    if method.base == "required" and base is None:
        planner.add((), f"merge method '{method.name}' needs a base_model",
                    "add base_model: <the model the others were fine-tuned from>")
        return
    has_base = method.base != "ignored" and base is not None
    if has_base and base not in refs:
        planner.add(where, f"the base model {base} is not among the sources of slices[{index}]",
                    "add the base model as a source of this slice, with the same layer_range length")
        return
    count = len(refs)
    non_base = count - (1 if has_base else 0)
    _bounds(planner, where, "inputs", count, method.min_inputs, method.max_inputs, method.name)
    _bounds(planner, where, "non-base inputs", non_base, method.min_non_base, method.max_non_base, method.name)


def _bounds(planner: Planner, where: tuple, what: str, count: int, low: int, high: int | None, name: str) -> None:
    if count < low or (high is not None and count > high):
        expected = f"exactly {low}" if high == low else (f"{low} to {high}" if high is not None else f"at least {low}")
        planner.add(where, f"merge method '{name}' takes {expected} {what}, but this has {count}",
                    "check the models/sources listed here" + (" and base_model" if "base" in what else ""),
                    key=("contract", f"{where}{what}"))
