"""Which tensors a model family has: from a plugin's definition, derived by a plugin from the
model itself (transformers), or, as a last resort, inferred from tensor names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from mergehub.common.errors import MergehubError
from mergehub.models.loader import ModelInfo
from mergehub.plugin.registry import Registry
from mergehub.plugin.specs import ArchitectureSpec

LAYER_INDEX = re.compile(r"\.(\d+)\.")
#: Loose tensors an inferred layout puts before the layers (input side); every other one goes after them.
INPUT_SIDE = re.compile(r"embed(?!_out)|\bwte\b|\bwpe\b|tok_embeddings|word_embeddings|position")


@dataclass(frozen=True)
class WeightDef:
    name: str
    optional: bool = False
    tied_to: str | None = None
    vocab_axis: int | None = None
    force_dtype: str | None = None
    varies: bool = False  # a layer tensor that layers of some kinds lack

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeightDef:
        return cls(data["name"], data.get("optional", False), data.get("tied_to"), data.get("vocab_axis"),
                   data.get("force_dtype"), data.get("varies", False))

    def at(self, layer: int) -> str:
        return self.name.replace("{layer}", str(layer))


@dataclass(frozen=True)
class Stack:
    """A repeated stack besides the main one (a vision tower, an encoder): merged whole."""

    name: str
    num_layers_key: str
    weights: tuple[WeightDef, ...]
    position: str = "pre"

    def expand(self, config: dict[str, Any]) -> tuple[WeightDef, ...]:
        """The stack's tensors for a model with ``config``, as fixed (layer-less) weights."""
        count = get_key(config, self.num_layers_key)
        if not isinstance(count, int):
            raise MergehubError(f"config.json has no integer '{self.num_layers_key}' (layers of the {self.name} stack)",
                                hint="the architecture definition reads that stack's layer count from this key")
        return tuple(replace(w, name=w.at(i), optional=w.optional or w.varies, varies=False)
                     for i in range(count) for w in self.weights)


@dataclass(frozen=True)
class LayerKey:
    """A config.json key that describes the main stack layer by layer (see the definition schema)."""

    key: str
    form: str
    marker: str | None = None
    marked_when: str = "present"
    explicit: str | None = None
    neutral: Any = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerKey:
        return cls(data["key"], data["form"], data.get("marker"), data.get("marked_when", "present"),
                   data.get("explicit"), data.get("neutral"))


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
    origin: str = "inferred"  # "plugin <distribution>", "derived from transformers (<distribution>)" or "inferred"
    stacks: tuple[Stack, ...] = ()
    layer_keys: tuple[LayerKey, ...] = ()
    #: per model (str of its ModelRef): values of layer_keys its config.json leaves for the family to derive
    layer_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_config: str | None = None

    def num_layers(self, model: ModelInfo) -> int:
        if self.inferred_layers is not None and self.num_layers_key is None:
            return _count_layers(model, self)
        value = get_key(model.config, self.num_layers_key or "")
        if not isinstance(value, int):
            raise MergehubError(f"{model.directory}/config.json has no integer '{self.num_layers_key}'",
                                hint=f"the {self.name} architecture reads the layer count from that key")
        return value

    def covers(self, name: str) -> bool:
        """Whether the definition names tensor ``name``: a fixed weight, or a layer or stack template at
        some layer number."""
        templates = self.layer + tuple(w for stack in self.stacks for w in stack.weights)
        return name in {w.name for w in self.pre + self.post} or any(matches_template(w.name, name) for w in templates)

    def layer_value(self, model: ModelInfo, key: str) -> Any:
        """A per-layer config value of ``model``: its config.json's, else what the family derives."""
        value = get_key(model.config, key)
        return value if value is not None else self.layer_values.get(str(model.ref), {}).get(key)


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


def from_definition(definition: dict[str, Any], origin: str = "inferred", ref: str | None = None) -> Layout:
    weights = lambda items: tuple(WeightDef.from_json(w) for w in items)  # noqa: E731
    stacks = tuple(Stack(s["name"], s["num_layers_key"], weights(s["weights"]), s.get("position", "pre"))
                   for s in definition.get("stacks", []))
    return Layout(definition["name"], weights(definition.get("pre_weights", [])), weights(definition.get("layer_weights", [])),
                  weights(definition.get("post_weights", [])), definition["num_layers_key"],
                  definition.get("tie_embeddings_key"), origin=origin, stacks=stacks,
                  layer_keys=tuple(LayerKey.from_json(k) for k in definition.get("layer_config", [])),
                  layer_values={ref: definition["layer_values"]} if ref and definition.get("layer_values") else {},
                  check_config=definition.get("check_config"))


def resolve_layout(models: list[ModelInfo], registry: Registry, allow_crimes: bool = False,
                   trust_remote_code: bool = False) -> tuple[Layout, list[str]]:
    """The layout for a merge of ``models`` (donor first) and any warnings.

    An installed plugin's definition wins; else a plugin that derives definitions from the model
    itself (transformers) is asked; name inference is the last resort.
    """
    specs = [registry.architecture_for(m.architecture or "", m.config.get("model_type")) for m in models]
    if all(specs):
        check_one_family(models, [s.name for s in specs if s], allow_crimes)
        spec = specs[0]
        assert spec is not None
        return from_definition(spec.definition, f"plugin {registry.architectures[spec.name].plugin.distribution}"), []
    derived = [registry.derive_architecture(m.config, m.reader.tensor_names(), trust_remote_code) for m in models]
    if all(derived):
        return merge_derived(models, derived, allow_crimes), []  # type: ignore[arg-type]
    unknown = sorted({m.architecture or "?" for m, s, d in zip(models, specs, derived) if s is None and d is None})
    layout = infer_layout(models)
    hint = registry.missing_architecture_hint(unknown)
    warning = (f"no installed architecture plugin knows {', '.join(unknown)}; inferred {layout.inferred_layers} layers "
               f"from tensor names" + (f". {hint}" if hint else ""))
    return layout, [warning]


def check_one_family(models: list[ModelInfo], names: list[str], allow_crimes: bool) -> None:
    if len(set(names)) > 1 and not allow_crimes:
        listing = ", ".join(f"{m.ref} ({m.architecture})" for m in models)
        raise MergehubError(f"the models have different architectures: {listing}",
                            hint="merge models of one family, or pass --allow-crimes to try anyway")


def merge_derived(models: list[ModelInfo], derived: list[tuple[ArchitectureSpec, str]], allow_crimes: bool) -> Layout:
    """One layout from the definitions derived for each model: the donor's, with every model's
    per-layer values and every layer tensor some model has (hybrid models of different depths)."""
    check_one_family(models, [spec.name for spec, _ in derived], allow_crimes)
    layouts = [from_definition(spec.definition, f"derived from transformers ({dist})", str(m.ref))
               for m, (spec, dist) in zip(models, derived)]
    layer: dict[str, WeightDef] = {}
    for lay in layouts:
        for w in lay.layer:
            layer.setdefault(w.name, w)
    values = {k: v for lay in layouts for k, v in lay.layer_values.items()}
    return replace(layouts[0], layer=tuple(layer.values()), layer_values=values)


def infer_layout(models: list[ModelInfo]) -> Layout:
    """Guess a layout: names with ``.<n>.`` are layer tensors; of the others, the input embeddings
    come before the layers and everything else (final norm, output head) after them."""
    templates: dict[str, None] = {}
    loose: dict[str, None] = {}
    prefixes: set[str] = set()
    max_index = -1
    names_per_model = [set(m.reader.tensor_names()) for m in models]
    everything = sorted(set().union(*names_per_model))
    for name in everything:
        match = LAYER_INDEX.search(name)
        if match is None:
            loose[name] = None
            continue
        prefixes.add(name[: match.start()])
        max_index = max(max_index, int(match.group(1)))
        templates[name[: match.start()] + ".{layer}." + name[match.end():]] = None
    if len(prefixes) > 1:
        raise MergehubError(f"cannot infer the layer structure: several layer stacks ({', '.join(sorted(prefixes))})",
                            hint="install mergehub-arch-transformers (it derives the layout from transformers), or "
                            "write an architecture plugin for this model family (see CONTRIBUTING.md)")
    missing = lambda name: any(name not in names for names in names_per_model)  # noqa: E731
    present = set(everything)
    varies = lambda t: any(t.replace("{layer}", str(i)) not in present for i in range(max_index + 1))  # noqa: E731
    config = models[0].config
    key = "num_hidden_layers" if config.get("num_hidden_layers") == max_index + 1 else None
    fixed = lambda names: tuple(WeightDef(n, optional=missing(n)) for n in names)  # noqa: E731
    return Layout(
        name="inferred",
        pre=fixed(n for n in loose if INPUT_SIDE.search(n)),
        layer=tuple(WeightDef(t, optional=missing(t.replace("{layer}", "0")), varies=varies(t)) for t in templates),
        post=fixed(n for n in loose if not INPUT_SIDE.search(n)),
        num_layers_key=key,
        tie_key="tie_word_embeddings" if "tie_word_embeddings" in config else None,
        inferred_layers=max_index + 1,
    )


def matches_template(template: str, name: str) -> bool:
    """Whether ``name`` is ``template`` (a layer tensor name with ``{layer}``) at some layer number."""
    head, _, tail = template.partition("{layer}")
    middle = name[len(head): len(name) - len(tail)] if name.startswith(head) and name.endswith(tail) else ""
    return middle.isdigit()


def _count_layers(model: ModelInfo, layout: Layout) -> int:
    indices = [int(m.group(1)) for n in model.reader.tensor_names() if (m := LAYER_INDEX.search(n))]
    return max(indices) + 1 if indices else 0
