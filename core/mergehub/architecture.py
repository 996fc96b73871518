"""Which tensors a model family has, from a plugin's definition or inferred from names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mergehub.errors import MergehubError
from mergehub.models import ModelInfo
from mergehub.registry import Registry

LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class WeightDef:
    name: str
    optional: bool = False
    tied_to: str | None = None
    vocab_axis: int | None = None
    force_dtype: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeightDef:
        return cls(data["name"], data.get("optional", False), data.get("tied_to"), data.get("vocab_axis"), data.get("force_dtype"))

    def at(self, layer: int) -> str:
        return self.name.replace("{layer}", str(layer))


@dataclass(frozen=True)
class Layout:
    """The tensor layout the planner expands: pre-layer, per-layer and post-layer weights."""

    name: str
    pre: tuple[WeightDef, ...]
    layer: tuple[WeightDef, ...]
    post: tuple[WeightDef, ...]
    num_layers_key: str | None
    tie_key: str | None
    inferred_layers: int | None = None  # set when the layout was inferred from tensor names

    def num_layers(self, model: ModelInfo) -> int:
        if self.inferred_layers is not None and self.num_layers_key is None:
            return _count_layers(model, self)
        value = get_key(model.config, self.num_layers_key or "")
        if not isinstance(value, int):
            raise MergehubError(f"{model.directory}/config.json has no integer '{self.num_layers_key}'",
                                hint=f"the {self.name} architecture reads the layer count from that key")
        return value


def get_key(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


def from_definition(definition: dict[str, Any]) -> Layout:
    weights = lambda key: tuple(WeightDef.from_json(w) for w in definition.get(key, []))  # noqa: E731
    return Layout(definition["name"], weights("pre_weights"), weights("layer_weights"), weights("post_weights"),
                  definition["num_layers_key"], definition.get("tie_embeddings_key"))


def resolve_layout(models: list[ModelInfo], registry: Registry, allow_crimes: bool = False) -> tuple[Layout, list[str]]:
    """The layout for a merge of ``models`` (donor first) and any warnings."""
    specs = [registry.architecture_for(m.architecture or "", m.config.get("model_type")) for m in models]
    if all(specs):
        names = {s.name for s in specs if s}
        if len(names) > 1 and not allow_crimes:
            listing = ", ".join(f"{m.ref} ({m.architecture})" for m in models)
            raise MergehubError(f"the models have different architectures: {listing}",
                                hint="merge models of one family, or pass --allow-crimes to try anyway")
        return from_definition(specs[0].definition), []  # type: ignore[union-attr]
    unknown = sorted({m.architecture or "?" for m, s in zip(models, specs) if s is None})
    layout = infer_layout(models)
    warning = (f"no installed architecture plugin knows {', '.join(unknown)}; inferred {layout.inferred_layers} layers "
               f"from tensor names (non-layer tensors all come from the first slice)")
    return layout, [warning]


def infer_layout(models: list[ModelInfo]) -> Layout:
    """Guess a layout: names with ``.<n>.`` are layer tensors, everything else is pre-layer."""
    templates: dict[str, None] = {}
    loose: dict[str, None] = {}
    prefixes: set[str] = set()
    max_index = -1
    names_per_model = [set(m.reader.tensor_names()) for m in models]
    for name in sorted(set().union(*names_per_model)):
        match = LAYER_INDEX.search(name)
        if match is None:
            loose[name] = None
            continue
        prefixes.add(name[: match.start()])
        max_index = max(max_index, int(match.group(1)))
        templates[name[: match.start()] + ".{layer}." + name[match.end():]] = None
    if len(prefixes) > 1:
        raise MergehubError(f"cannot infer the layer structure: several layer stacks ({', '.join(sorted(prefixes))})",
                            hint="install or write an architecture plugin for this model family (see CONTRIBUTING.md)")
    missing = lambda name: any(name not in names for names in names_per_model)  # noqa: E731
    config = models[0].config
    key = "num_hidden_layers" if config.get("num_hidden_layers") == max_index + 1 else None
    return Layout(
        name="inferred",
        pre=tuple(WeightDef(n, optional=missing(n)) for n in loose),
        layer=tuple(WeightDef(t, optional=missing(t.replace("{layer}", "0"))) for t in templates),
        post=(),
        num_layers_key=key,
        tie_key="tie_word_embeddings" if "tie_word_embeddings" in config else None,
        inferred_layers=max_index + 1,
    )


def _count_layers(model: ModelInfo, layout: Layout) -> int:
    indices = [int(m.group(1)) for n in model.reader.tensor_names() if (m := LAYER_INDEX.search(n))]
    return max(indices) + 1 if indices else 0
