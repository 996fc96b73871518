"""Property tests of the validator and planner: no recipe, however broken, ends in anything but a MergehubError.

Hypothesis writes recipes of two kinds. *Valid* ones use the installed methods (from the registry, never a
hand-kept list) with parameters drawn inside their schema's bounds, as scalars, gradients or filtered values,
over three tiny real checkpoints, with ``models:`` or ``slices:`` (layer ranges), dtypes, tokenizers and chat
templates, and multi-stage recipes: these must plan without error. *Mutated* ones are valid recipes with keys
dropped or misspelt, values swapped for random YAML (wrong types, out-of-range and non-finite numbers, random
unicode, random model paths), or their YAML text edited character by character, plus YAML text from scratch:
these may be refused, but only with a MergehubError. Recipes go through the path ``mergehub validate`` takes
(YAML text -> documents -> load_recipe -> make_plan; several documents -> split_stages -> plan_stages).

The runs are derandomized and use no example database, so CI sees the same examples every time, and the
example counts keep the whole file well under 30 seconds.
"""

from __future__ import annotations

import copy
import math
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mergehub.common.errors import MergehubError
from mergehub.plan.planner import make_plan
from mergehub.plan.stages import plan_stages, split_stages
from mergehub.plugin.registry import Registry, build_registry
from mergehub.plugin.specs import MethodSpec
from mergehub.recipe.config import load_recipe
from mergehub.recipe.yamlsource import parse_documents

LAYERS = 3
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fuzz(examples: int) -> settings:
    """Reproducible (derandomized, no database) and bounded: ``examples`` recipes per test."""
    return settings(FUZZ, max_examples=examples)


#: The installed plugins, once: the valid recipes use every method they provide.
REGISTRY = build_registry()
METHODS = sorted(REGISTRY.methods)


# -- the world the recipes are checked in ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Three tiny llamas of the same shape, a registry, and a Hub that is offline and empty (random ids stay local).

    The odd models fill the mutated recipes: another architecture, other shapes, other depths, and directories
    that are not models at all.
    """
    from huggingface_hub import constants

    models = [str(tiny_models(f"fuzz-{name}", layers=LAYERS, tokenizer=True, seed=seed))
              for name, seed in (("a", 31), ("b", 32), ("c", 33))]
    odd_root = tmp_path_factory.mktemp("fuzz-odd")
    (odd_root / "empty").mkdir()
    (odd_root / "config-only").mkdir()
    (odd_root / "config-only" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (odd_root / "a-file").write_text("not a model")
    ODD[:] = [str(tiny_models("fuzz-mistral", arch="mistral", layers=LAYERS, seed=34)),
              str(tiny_models("fuzz-wide", layers=LAYERS, hidden=32, seed=35)),
              str(tiny_models("fuzz-deep", layers=LAYERS + 2, vocab=80, seed=36)),
              *(str(odd_root / name) for name in ("empty", "config-only", "a-file", "missing"))]
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("empty-hub-cache")
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setattr(constants, "HF_HUB_OFFLINE", True)
    patch.setattr(constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path_factory.mktemp("fuzz-out")
    yield World(models, REGISTRY, out)
    patch.undo()


class World:
    def __init__(self, models: list[str], registry: Registry, out: Path):
        self.models, self.registry, self.out = models, registry, out

    def check(self, text: str) -> None:
        """Validate and plan ``text`` as ``mergehub validate`` does; MergehubError is the only way to refuse."""
        documents = parse_documents(text, "fuzz.yaml")
        if not documents:
            return
        if len(documents) > 1:
            stages = split_stages(documents, self.out / "final", self.out / "stages")
            plan_stages(stages, self.registry)
            for stage in stages:
                assert stage.plan is not None
            return
        recipe = load_recipe(documents[0], self.registry)
        make_plan(recipe, self.registry).close()

    def accepts(self, text: str, what: str) -> None:
        """A valid ``text`` must plan; a refusal fails the test with every problem it named."""
        try:
            self.check(text)
        except MergehubError as exc:
            problems = getattr(exc, "problems", [])
            details = "\n".join(f"{p.where('fuzz.yaml')}: {p.message}" for p in problems) or exc.message
            raise AssertionError(f"a valid {what} was refused:\n{text}\n{details}") from None

    def refuses_only_cleanly(self, text: str) -> None:
        try:
            self.check(text)
        except MergehubError as exc:  # anything else escapes and fails the test, with the text that caused it
            assert exc.message, "an error must say what is wrong"


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def dump_all(documents: list[Any]) -> str:
    return yaml.safe_dump_all(documents, allow_unicode=True, sort_keys=False)


# -- valid recipes ---------------------------------------------------------------------------------------------------
#: Where a value may apply (filters match substrings of tensor names).
FILTERS = ["self_attn", "mlp", "q_proj", "layernorm", "embed_tokens", "*", None]
#: Unbounded numeric parameters that still have a natural range (slerp's t) or must not cancel out (weights).
NATURAL = {"t": (0.0, 1.0), "weight": (0.05, 2.0), "lambda": (0.1, 2.0), "eps": (0.0, 1e-3), "tol": (0.0, 1e-3),
           "scale": (0.1, 2.0)}


def bounds(name: str, prop: dict[str, Any]) -> tuple[float, float]:
    low, high = NATURAL.get(name, (0.0, 1.0))
    low = max(low, prop.get("minimum", low), prop.get("exclusiveMinimum", low - 1) + 1e-6)
    high = min(high, prop.get("maximum", high), prop.get("exclusiveMaximum", high + 1) - 1e-6)
    if name == "density":  # DELLA needs density ± epsilon inside (0, 1): keep densities away from the edges
        low, high = max(low, 0.3), min(high, 0.7)
    if name == "epsilon":
        high = min(high, 0.25)
    return low, max(low, high)


def number(name: str, prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    if prop.get("type") == "integer":
        low = int(prop.get("minimum", 0))
        return st.integers(low, min(int(prop.get("maximum", low + 20)), low + 20))
    low, high = bounds(name, prop)
    return st.floats(low, high, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 4))


def parameter_value(name: str, prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A scalar, a gradient (list) or filtered values, each inside the parameter's schema."""
    if prop.get("type") == "boolean":
        return st.booleans()
    scalar = number(name, prop)
    if prop.get("type") == "integer" or name == "epsilon":
        return scalar
    gradient = st.lists(scalar, min_size=1, max_size=4)
    plain = st.one_of(scalar, gradient)
    filtered = st.lists(st.fixed_dictionaries({"filter": st.sampled_from(FILTERS), "value": plain}), max_size=2)
    last = st.fixed_dictionaries({"value": plain})  # a value without a filter matches everything
    return st.one_of(scalar, gradient, st.tuples(filtered, last).map(lambda pair: pair[0] + [pair[1]]))


def parameters_for(spec: MethodSpec, scopes: set[str], required: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Parameters of ``spec`` whose scope is in ``scopes``; ``required`` ones always, the others sometimes."""
    props = {name: prop for name, prop in spec.parameters.get("properties", {}).items()
             if prop.get("x-scope") in scopes and "x-ignored" not in prop}
    always = {n: parameter_value(n, p) for n, p in props.items() if required and "default" not in p}
    maybe = {n: parameter_value(n, p) for n, p in props.items() if n not in always}
    return st.fixed_dictionaries(always, optional=maybe)


@st.composite
def valid_recipe(draw: Callable, models: list[str], method_names: list[str] = METHODS,
                 allow_slices: bool = True) -> dict[str, Any]:
    spec = REGISTRY.methods[draw(st.sampled_from(method_names))].spec
    uses_base = spec.base == "required" or (spec.base == "optional" and draw(st.booleans()))
    low = max(spec.min_inputs, spec.min_non_base + uses_base)
    high = min(spec.max_inputs or len(models), (spec.max_non_base or len(models)) + uses_base, len(models))
    chosen = draw(st.permutations(models))[: draw(st.integers(low, high))]
    recipe: dict[str, Any] = {"merge_method": spec.name}
    if uses_base:
        recipe["base_model"] = chosen[0]
    non_base = {"non_base", "input"}

    def own_parameters(model: str) -> dict[str, Any]:
        scopes = {"input"} if uses_base and model == chosen[0] else non_base
        return draw(parameters_for(spec, scopes, required=False))

    if spec.name == "passthrough" or (allow_slices and draw(st.booleans())):
        recipe["slices"] = draw(slices(chosen, own_parameters, stack=spec.name == "passthrough"))
    else:
        recipe["models"] = [{"model": m, **({"parameters": p} if (p := own_parameters(m)) else {})} for m in chosen]
    top = draw(parameters_for(spec, {"shared", "input", "non_base"}, required=True))
    if top:
        recipe["parameters"] = top
    if draw(st.integers(0, 7)) == 0:
        recipe["tokenizer"] = draw(tokenizer_block(chosen))
    for key, choices in (("dtype", ["float32", "bfloat16", "float16", "bf16", "fp32", "torch.float32"]),
                         ("out_dtype", ["float32", "bfloat16"]),
                         ("tokenizer_source", [] if "tokenizer" in recipe else ["base", "union", chosen[-1]]),
                         ("chat_template", ["auto", "chatml", "llama3", "{% for m in messages %}{{ m.content }}{% endfor %}"])):
        if choices and draw(st.integers(0, 5)) == 0:
            recipe[key] = draw(st.sampled_from(choices))
    return recipe


def tokenizer_block(chosen: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A ``tokenizer:`` block: source, padding, and token entries of every kind (the tiny tokenizers have <s>, w5 …;
    a model is the source of a token only if it has it)."""
    def entry(token: str) -> st.SearchStrategy[dict[str, Any]]:
        shared = token in ("<s>", "w7")
        source = st.one_of(st.sampled_from(chosen), new_source) if shared else new_source
        return st.fixed_dictionaries({}, optional={"source": source, "force": st.booleans()})

    new_source = st.one_of(
        st.just({"kind": "zero"}),
        st.builds(lambda m, t: {"kind": "model_token", "model": m, "token": t}, st.sampled_from(chosen),
                  st.sampled_from(["<s>", "</s>", "w5"])),
        st.builds(lambda m, i: {"kind": "model_token", "model": m, "token_id": i}, st.sampled_from(chosen),
                  st.integers(0, 40)),
    )
    tokens = {token: entry(token) for token in ("<s>", "w7", "<|im_start|>", "<pad>")}
    return st.fixed_dictionaries({}, optional={
        "source": st.sampled_from(["union", "base", *chosen]),
        "pad_to_multiple_of": st.integers(1, 64),
        "tokens": st.fixed_dictionaries({}, optional=tokens),
    })


@st.composite
def slices(draw: Callable, chosen: list[str], own_parameters: Callable[[str], dict[str, Any]],
           stack: bool) -> list[dict[str, Any]]:
    """1-3 slices; in each, every chosen model covers a range of the same length (passthrough: one source each)."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        length = draw(st.integers(1, LAYERS))
        sources = []
        for model in chosen[:1] if stack else chosen:
            start = draw(st.integers(0, LAYERS - length))
            source: dict[str, Any] = {"model": model, "layer_range": [start, start + length]}
            if parameters := own_parameters(model):
                source["parameters"] = parameters
            sources.append(source)
        out.append({"sources": sources})
    return out


@st.composite
def valid_stages(draw: Callable, models: list[str]) -> list[dict[str, Any]]:
    """A named first stage (models: syntax, so it keeps the depth) used by the final merge."""
    first = draw(valid_recipe(models, ["linear", "slerp", "task_arithmetic", "ties", "karcher", "nuslerp"],
                              allow_slices=False))
    first["name"] = draw(st.sampled_from(["stage1", "blend", "v1.5", "étape"]))
    final = {"merge_method": "linear", "models": [{"model": first["name"], "parameters": {"weight": 0.5}},
                                                  {"model": models[1], "parameters": {"weight": 0.5}}]}
    if "tokenizer" in first or "tokenizer_source" in first:  # the stage's vocabulary may have grown: align it
        final["tokenizer_source"] = draw(st.sampled_from(["union", "base"]))
    return [first, final]


# -- mutations -------------------------------------------------------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["", "~", "..", "/", "org/name", "org/name@rev", "a+b", "a+b+c", "a@b@c",
                                           "base", "union", "null", "yes", "1e-4", "{", "!!", "\x00", "é/ü"]),
)
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                              st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
ODD: list[str] = []  # filled by the world fixture before any test draws a recipe
KEYS = ["merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source",
        "tokenizer", "chat_template", "name", "sources", "layer_range", "model", "weight", "density", "t", "filter",
        "value", "source", "tokens", "pad_to_multiple_of", "lora", "revision", "path", "kind", "force"]


def paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in ``data`` (mappings and lists)."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += paths(value, prefix + (i,))
    return found


def parent_of(data: Any, path: tuple) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated(draw: Callable, base: Any) -> Any:
    """``base`` with 1-3 random edits: drop, misspell or add a key, replace a value, break a number."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        targets = [p for p in paths(data) if p]
        kind = draw(st.sampled_from(["drop", "rename", "replace", "number", "add", "model", "model", "range", "whole"]))
        if kind == "whole" or not targets:
            data = draw(YAML_VALUES)
            continue
        path = draw(st.sampled_from(targets))
        parent, last = parent_of(data, path), path[-1]
        if kind == "drop":
            del parent[last]
        elif kind == "rename" and isinstance(parent, dict):
            name = str(last)
            cut = draw(st.integers(0, len(name)))
            new = name[:cut] + draw(st.sampled_from(["", "x", "_", "s", "é"])) + name[cut + 1:]
            parent[new] = parent.pop(last)
        elif kind == "replace":
            parent[last] = draw(YAML_VALUES)
        elif kind == "number":
            parent[last] = draw(st.sampled_from([-1, -1e9, 1e9, 2, 10**30, math.nan, math.inf, -math.inf, 0, -0.0,
                                                 1.5, True, "0.5", [0.5, "x"], [], {}]))
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS + ["wieght", "modles", "baseModel"]))] = draw(YAML_VALUES)
        elif kind == "model":
            parent[last] = draw(st.one_of(st.text(max_size=30), SCALARS, st.sampled_from(ODD or [""])))
        elif kind == "range":
            parent[last] = draw(st.lists(st.integers(-2, LAYERS + 3), min_size=0, max_size=3))
    return data


def edited_text(text: str) -> st.SearchStrategy[str]:
    """``text`` with a few characters inserted, deleted or replaced (YAML syntax errors, odd scalars)."""
    pieces = st.sampled_from(list(":-[]{}&*!|>'\"#%@`, \t\n") + ["!!python/object/apply:os.system", "&a", "*a",
                                                                  "---", "...", "\x00", "\ufeff", "é", "0x1F"])

    @st.composite
    def edit(draw: Callable) -> str:
        out = text
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(out)))
            choice = draw(st.sampled_from(["insert", "delete", "replace"]))
            piece = draw(pieces)
            if choice == "insert":
                out = out[:at] + piece + out[at:]
            elif choice == "delete":
                out = out[:at] + out[at + draw(st.integers(1, 5)):]
            else:
                out = out[:at] + piece + out[at + len(piece):]
        return out

    return edit()


# -- the properties --------------------------------------------------------------------------------------------------
@fuzz(200)
@given(st.data())
def test_valid_recipes_plan_without_error(world: World, data: st.DataObject) -> None:
    world.accepts(dump(data.draw(valid_recipe(world.models), label="recipe")), "recipe")


@fuzz(30)
@given(st.data())
def test_valid_multi_stage_recipes_plan_without_error(world: World, data: st.DataObject) -> None:
    world.accepts(dump_all(data.draw(valid_stages(world.models), label="stages")), "multi-stage recipe")


@fuzz(400)
@given(st.data())
def test_mutated_recipes_fail_only_with_a_mergehub_error(world: World, data: st.DataObject) -> None:
    recipe = data.draw(mutated(data.draw(valid_recipe(world.models), label="valid")), label="mutated")
    world.refuses_only_cleanly(dump(recipe))


@fuzz(80)
@given(st.data())
def test_mutated_multi_stage_recipes_fail_only_with_a_mergehub_error(world: World, data: st.DataObject) -> None:
    stages = data.draw(valid_stages(world.models), label="stages")
    which = data.draw(st.integers(0, 1))
    stages[which] = data.draw(mutated(stages[which]), label="mutated")
    world.refuses_only_cleanly(dump_all(stages))


@fuzz(300)
@given(st.data())
def test_edited_yaml_text_fails_only_with_a_mergehub_error(world: World, data: st.DataObject) -> None:
    recipe = data.draw(valid_recipe(world.models), label="valid")
    text = data.draw(edited_text(dump(recipe)), label="text")
    world.refuses_only_cleanly(text)


RAW = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=string.printable, max_size=200),
    st.lists(st.sampled_from(["merge_method: linear", "models:", "  - model: x", "slices:", "- sources:", "---",
                              "  layer_range: [0, 1]", "parameters: {weight: [1, 0]}", "&a [*a]", "a: &x [*x]",
                              "? [a]\n: b", "!!binary aGk=", "!!set {a}", "2001-12-14", "{a: 1, a: 2}",
                              "[" * 50, "- " * 60, "base_model: !!python/name:os.system", "\t"]),
             max_size=8).map("\n".join),
)


@fuzz(300)
@given(RAW)
def test_raw_yaml_text_fails_only_with_a_mergehub_error(world: World, text: str) -> None:
    world.refuses_only_cleanly(text)


@pytest.mark.parametrize("text", [
    "a: &x [*x]\n",                                    # a list that contains itself
    "merge_method: linear\nmodels: &m [{model: *m}]\n",
    "merge_method: linear\nparameters: &p {weight: *p}\nmodels: [{model: a}]\n",
    "[" * 1000 + "]" * 1000,                           # deeper than Python's recursion limit
    "merge_method: linear\nmodels:\n" + "".join(f"  - model: m{i}\n" for i in range(300)),
], ids=["self-list", "self-models", "self-parameters", "deep", "many-models"])
def test_recursive_and_huge_yaml_is_a_clear_error(world: World, text: str) -> None:
    with pytest.raises(MergehubError):
        world.check(text)


FOUND = {  # what the fuzzing above found (uncaught TypeErrors), kept as plain regression cases
    "models-not-a-list": "merge_method: linear\nmodels: -1\n",
    "slices-not-a-list": "merge_method: passthrough\nslices: -1.0e9\n",
    "sources-not-a-list": "merge_method: linear\nslices:\n  - sources: 1000000000000000000000000000000\n",
    "float-range-past-the-end": "merge_method: passthrough\nslices:\n  - sources: [{model: A, layer_range: [1.0e9, 3]}]\n",
    "float-range-empty": "merge_method: passthrough\nslices:\n  - sources: [{model: A, layer_range: [2.0, 1.0]}]\n",
}


@pytest.mark.parametrize("case", list(FOUND))
def test_cases_found_by_fuzzing_are_clear_errors(world: World, case: str) -> None:
    with pytest.raises(MergehubError) as caught:
        world.check(FOUND[case].replace("A", world.models[0]))
    if case == "float-range-empty":
        assert "is empty" in caught.value.problems[0].message  # type: ignore[attr-defined]


def test_integral_float_layer_ranges_plan_as_integers(world: World) -> None:
    """JSON Schema counts 3.0 as an integer, so the recipe is valid: it must plan like [0, 3]."""
    text = f"merge_method: passthrough\nslices:\n  - sources: [{{model: {world.models[0]}, layer_range: [0.0, 3.0]}}]\n"
    world.check(text)
