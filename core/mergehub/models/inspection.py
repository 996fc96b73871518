"""How mergehub sees one model (``mergehub inspect``): its architecture definition, layer kinds,
other stacks, per-layer config keys, tied and vocabulary tensors, and what the definition misses.

Only config.json and tensor headers are read, never tensor data.
"""

from __future__ import annotations

from typing import Any

from mergehub.common.errors import MergehubError
from mergehub.models.architecture import (
    LAYER_INDEX,
    Layout,
    get_key,
    matches_template,
    resolve_layout,
)
from mergehub.models.loader import ModelInfo, load_model
from mergehub.plugin.registry import Registry
from mergehub.recipe.config import ModelRef


def inspect_model(model_ref: str, registry: Registry, trust_remote_code: bool = False) -> dict[str, Any]:
    """Everything ``mergehub inspect`` shows about ``model_ref`` (a directory or ``org/name[@rev]``), as plain data."""
    try:
        ref = ModelRef.parse(model_ref)
    except ValueError as exc:
        raise MergehubError(str(exc), hint="give a model directory or a Hub id org/name[@revision]") from exc
    model = load_model(ref, registry)
    try:
        layout, warnings = resolve_layout([model], registry, allow_crimes=False, trust_remote_code=trust_remote_code)
        return describe(model, layout, warnings)
    finally:
        model.close()


def describe(model: ModelInfo, layout: Layout, warnings: list[str]) -> dict[str, Any]:
    """The report for an opened ``model`` and the ``layout`` mergehub resolved for it."""
    names = model.reader.tensor_names()
    present = set(names)
    count = layout.num_layers(model)
    fixed = layout.pre + layout.post
    return {
        "model": str(model.ref),
        "directory": str(model.directory),
        "architecture": model.architecture,
        "model_type": model.config.get("model_type"),
        "definition": {"name": layout.name, "origin": layout.origin, "warnings": list(warnings)},
        "main_stack": {"num_layers_key": layout.num_layers_key, "layers": count},
        "layer_kinds": layer_kinds(layout, present, count),
        "other_stacks": other_stacks(layout, names),
        "layer_config": [
            {"key": entry.key, "form": entry.form, "value": layout.layer_value(model, entry.key),
             "source": _value_source(model, layout, entry.key)}
            for entry in layout.layer_keys
        ],
        "tied": {
            "key": layout.tie_key,
            "value": get_key(model.config, layout.tie_key) if layout.tie_key else None,
            "pairs": [{"name": w.name, "tied_to": w.tied_to, "own_copy": w.name in present} for w in fixed if w.tied_to],
        },
        "vocabulary": [
            {"name": w.name, "axis": w.vocab_axis,
             "shape": list(model.reader.header(w.name).shape) if w.name in present else None}
            for w in fixed if w.vocab_axis is not None
        ],
        "uncovered": uncovered(layout, names),
    }


def layer_kinds(layout: Layout, present: set[str], count: int) -> list[dict[str, Any]]:
    """The main stack's layers grouped by which layer templates they have, in order of first layer.

    Every kind after the first says which templates it has that the first lacks (``added``) and the
    reverse (``missing``), as the part of the name after ``{layer}.``.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in range(count):
        groups.setdefault(tuple(w.name for w in layout.layer if w.at(i) in present), []).append(i)
    kinds = []
    first: set[str] | None = None
    for templates, layers in groups.items():
        mine = set(templates)
        first = mine if first is None else first
        kinds.append({"layers": layers, "tensors": len(templates),
                      "added": [_tail(t) for t in templates if t not in first],
                      "missing": [_tail(w.name) for w in layout.layer if w.name in first - mine]})
    return kinds


def other_stacks(layout: Layout, names: list[str]) -> list[dict[str, Any]]:
    """Repeated stacks outside the main one (a vision tower's layers): the prefix before ``.<n>.`` of
    the checkpoint's pre/post weights and stack tensors, with its layer count (largest index + 1)."""
    fixed = {w.name for w in layout.pre + layout.post}
    stack_templates = [w.name for stack in layout.stacks for w in stack.weights]
    stacks: dict[str, dict[str, Any]] = {}
    for name in names:
        match = LAYER_INDEX.search(name)
        if match is None or not (name in fixed or any(matches_template(t, name) for t in stack_templates)):
            continue
        entry = stacks.setdefault(name[: match.start()], {"max": -1, "tensors": 0})
        entry["max"] = max(entry["max"], int(match.group(1)))
        entry["tensors"] += 1
    return [{"prefix": prefix, "layers": entry["max"] + 1, "tensors": entry["tensors"]}
            for prefix, entry in sorted(stacks.items())]


def uncovered(layout: Layout, names: list[str]) -> list[str]:
    """The tensors the definition does not name (the ones a merge would not write)."""
    return [n for n in sorted(names) if not layout.covers(n)]


def _value_source(model: ModelInfo, layout: Layout, key: str) -> str | None:
    """"config.json" when the file states the key, "derived" when the family fills it in, else None."""
    if get_key(model.config, key) is not None:
        return "config.json"
    if key in layout.layer_values.get(str(model.ref), {}):
        return "derived"
    return None


def _tail(template: str) -> str:
    return template.split("{layer}.", 1)[-1]
