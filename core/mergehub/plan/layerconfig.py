"""Per-layer config keys that follow the layers: when slices stack layers, every key that describes
the main stack layer by layer (``layer_types``, MoE-only layer lists, a dense prefix, a period) is
rebuilt from the source layer each output layer came from.

Keys come from the architecture definition's ``layer_config``. A rule that cannot describe the new
stack is replaced by its explicit form when the definition names one, otherwise planning stops
with an error that names the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mergehub.common.errors import MergehubError
from mergehub.models.architecture import LayerKey, set_key
from mergehub.plugin.specs import import_object

if TYPE_CHECKING:
    from mergehub.plan.planner import Plan


def rebuild_layer_keys(plan: Plan, config: dict[str, Any]) -> None:
    """Rewrite ``config``'s per-layer keys for the layers ``plan`` writes (slices syntax)."""
    explicit_written: set[str] = set()
    rules = [k for k in plan.layout.layer_keys if k.form in ("leading_count", "period")]
    for entry in [k for k in plan.layout.layer_keys if k.form in ("list", "indices", "mapping")]:
        value = _rebuilt(plan, entry)
        if value is not None:
            set_key(config, entry.key, value)
            explicit_written.add(entry.key)
    for entry in rules:
        marks = _marks(plan, entry)
        if marks is None:
            continue
        value = _rule_value(entry, marks)
        if value is not None:
            set_key(config, entry.key, value)
        elif entry.explicit and entry.explicit in explicit_written:
            set_key(config, entry.key, entry.neutral)
        else:
            raise MergehubError(
                f"config key '{entry.key}' describes the layers by a rule ({_describe(entry)}) that cannot "
                f"express the stacked layers (marked: {_layer_list(marks)})",
                hint="choose layer ranges that keep the pattern, or use an architecture definition whose "
                "layer_config names an explicit per-layer key for this rule")


def check_output_config(plan: Plan) -> tuple[str, str] | None:
    """The definition's own check that config.json describes the tensors written (message, hint), or None."""
    if not plan.layout.check_config:
        return None
    check = import_object(plan.layout.check_config)
    problem = check(plan.config, {t.name: t.shape for t in plan.tensors})
    if not problem:
        return None
    return (f"the output's config.json would not describe its tensors: {problem}",
            "this recipe stacks layers in a way the family's config cannot state; try other layer ranges, or report it "
            "with the recipe")


def _rebuilt(plan: Plan, entry: LayerKey) -> list[Any] | dict[str, Any] | None:
    """The new value of a list, indices or mapping key, or None when the inputs do not state it."""
    if entry.form == "indices":
        marks = _marks(plan, entry)
        return None if marks is None else [i for i, marked in enumerate(marks) if marked]
    if entry.form == "mapping":
        return _rebuilt_mapping(plan, entry)
    values = {}
    for m in {m for m, _ in plan.layer_sources}:
        value = plan.layout.layer_value(plan.models[m], entry.key)
        if not isinstance(value, list) or len(value) != plan.layout.num_layers(plan.models[m]):
            return None
        values[m] = value
    return [values[m][layer] for m, layer in plan.layer_sources]


def _rebuilt_mapping(plan: Plan, entry: LayerKey) -> dict[str, Any] | None:
    """A key holding settings for some layers by layer number (``per_layer_config``): each output layer
    gets its source layer's settings."""
    sources = {}
    for m in {m for m, _ in plan.layer_sources}:
        value = plan.layout.layer_value(plan.models[m], entry.key)
        if not isinstance(value, dict) or not all(str(k).isdigit() for k in value):
            return None
        sources[m] = {int(k): v for k, v in value.items()}
    return {str(i): sources[m][layer] for i, (m, layer) in enumerate(plan.layer_sources) if layer in sources[m]}


def _marks(plan: Plan, entry: LayerKey) -> list[bool] | None:
    """Whether each output layer is marked: by the marker tensor's presence, else by the source's config."""
    if entry.marker:
        templates = [w for w in plan.layout.layer if w.name.endswith(entry.marker)]
        if not templates:
            return None
        names = {m: set(plan.models[m].reader.tensor_names()) for m, _ in plan.layer_sources}
        present = [any(w.at(layer) in names[m] for w in templates) for m, layer in plan.layer_sources]
        return present if entry.marked_when == "present" else [not p for p in present]
    marked: list[bool] = []
    for m, layer in plan.layer_sources:
        value = plan.layout.layer_value(plan.models[m], entry.key)
        if value is None:
            return None
        marked.append(_source_marked(entry, value, layer))
    return marked


def _source_marked(entry: LayerKey, value: Any, layer: int) -> bool:
    if entry.form == "indices":
        return layer in value
    if entry.form == "leading_count":
        return layer < int(value)
    period = int(value)
    return period > 0 and (layer + 1) % period == 0


def _rule_value(entry: LayerKey, marks: list[bool]) -> int | None:
    """The rule's value that marks exactly ``marks``, or None when no value does."""
    if entry.form == "leading_count":
        count = marks.index(False) if False in marks else len(marks)
        return count if not any(marks[count:]) else None
    for period in range(1, len(marks) + 1):
        if all(marked == ((i + 1) % period == 0) for i, marked in enumerate(marks)):
            return period
    return None


def _describe(entry: LayerKey) -> str:
    return "the first N layers" if entry.form == "leading_count" else "every Nth layer"


def _layer_list(marks: list[bool]) -> str:
    shown = [str(i) for i, marked in enumerate(marks) if marked]
    return "layers " + ", ".join(shown) if shown else "no layer"

