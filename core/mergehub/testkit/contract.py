"""The plugin test kit: does a plugin distribution, *as installed*, keep mergehub's contract?

A plugin's own tests call it on its own distribution (``mergehub new`` writes a
``tests/test_installed.py`` doing so), and ``tests/test_contract.py`` runs it over every plugin of
this repository: the same checks for both. Everything is read from the installed distribution,
never from a source checkout, so they pass or fail alike for an editable install and a wheel:

- the entry point in group ``mergehub`` (named like the distribution) loads, and its hooks register
  specs the core accepts;
- a method's schema is valid against ``core_schema("method")`` (every error, not the first one);
  its defaults validate; its implementation, ``check`` and ``blocks`` factory import;
- the README, which is the distribution's long description in its metadata, shows
  ``merge_method: NAME`` and the parameter table :func:`parameter_table` generates
  (``mergehub schema --method NAME --markdown`` prints it); a method without parameters needs none;
- merging copies of one tensor gives that tensor back;
- with ``blocks`` declared, merging in row blocks gives exactly the bytes of merging whole, as the
  executor runs it (:func:`blocks_problems`);
- an architecture definition validates against ``core_schema("architecture")`` and the README names
  every ``architectures`` entry it serves.

``check_method_distribution`` and ``check_architecture_distribution`` raise one AssertionError listing
every problem; the ``*_problems`` functions return them as sentences, for specs built in memory.
Tensors are tiny and nothing runs in a subprocess: the whole kit takes well under a second per method.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from mergehub.plugin.discovery import GROUP, PluginManager, PluginRecord
from mergehub.plugin.specs import (
    ArchitectureSpec,
    MergeInputs,
    MethodSpec,
    import_object,
)

if TYPE_CHECKING:
    import torch

#: How a scope reads in a README table.
SCOPES = {"input": "per model", "non_base": "per model (not the base)", "shared": "shared"}
TABLE_HEADER = "| parameter | scope | type | default | meaning |"
TABLE_RULE = "|---|---|---|---|---|"
COLUMNS = ("parameter", "scope", "type", "default", "meaning")
#: The seed of the generator a randomized method gets; every MergeInputs gets a fresh one, as in the executor.
SEED = 1234
#: The tensors the block check merges, and where it cuts them into row blocks.
BLOCK_CASES: list[tuple[tuple[int, ...], list[int]]] = [((12, 8), [0, 1, 5, 12]), ((10,), [0, 3, 4, 10])]


# --- the README parameter table ---------------------------------------------------------------------------------

def format_value(value: Any) -> str:
    """A JSON value as a README shows it: ``true``, ``1.0``, ``1e-5``, ``auto``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", repr(value))
    return str(value)


def type_cell(prop: dict[str, Any]) -> str:
    """``number``, ``number (0 to 1)``, ``integer (≥ 0)``, ``number (> 0, ≤ 1)``, ``string (one of a, b)``."""
    low = [f"≥ {format_value(prop['minimum'])}"] if "minimum" in prop else []
    low += [f"> {format_value(prop['exclusiveMinimum'])}"] if "exclusiveMinimum" in prop else []
    high = [f"≤ {format_value(prop['maximum'])}"] if "maximum" in prop else []
    high += [f"< {format_value(prop['exclusiveMaximum'])}"] if "exclusiveMaximum" in prop else []
    if "minimum" in prop and "maximum" in prop and len(low) == len(high) == 1:
        bounds = [f"{format_value(prop['minimum'])} to {format_value(prop['maximum'])}"]
    else:
        bounds = low + high
    if "enum" in prop:
        bounds.append("one of " + ", ".join(format_value(v) for v in prop["enum"]))
    return f"{prop.get('type', '?')} ({', '.join(bounds)})" if bounds else str(prop.get("type", "?"))


def meaning_cell(prop: dict[str, Any]) -> str:
    """The description; for an ``x-ignored`` parameter, ``Ignored (warns): <the reason>.``"""
    if "x-ignored" in prop:
        reason = prop["x-ignored"].strip()
        return f"Ignored (warns): {reason}" + ("" if reason.endswith(".") else ".")
    return " ".join(str(prop.get("description", "")).split()).replace("|", "\\|")


def table_rows(spec: MethodSpec) -> list[list[str]]:
    """The cells of the parameter table, one list per parameter, in the schema's order."""
    required = set(spec.required_params())
    rows = []
    for name, prop in spec.parameters.get("properties", {}).items():
        default = "required" if name in required else f"`{format_value(prop.get('default'))}`"
        rows.append([f"`{name}`", SCOPES.get(prop.get("x-scope", "shared"), str(prop.get("x-scope"))),
                     type_cell(prop), default, meaning_cell(prop)])
    return rows


def parameter_table(spec: MethodSpec) -> str:
    """The markdown table a method's README must contain ("" for a method without parameters).

    One row per parameter in the schema's order: the name in backticks; the scope (``per model``,
    ``per model (not the base)``, ``shared``); the type with its bounds or enum; ``required`` or the
    default in backticks; the description (``Ignored (warns): <x-ignored>.`` for ignored parameters).
    ``mergehub schema --method NAME --markdown`` prints it, and :func:`readme_problems` compares with it.
    """
    rows = table_rows(spec)
    if not rows:
        return ""
    return "\n".join([TABLE_HEADER, TABLE_RULE, *("| " + " | ".join(cells) + " |" for cells in rows)]) + "\n"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _readme_tables(readme: str) -> list[list[str]]:
    """The lines of every table of the README that starts with the parameter table's header."""
    lines = [line.rstrip() for line in readme.splitlines()]
    tables = []
    for i, line in enumerate(lines):
        if _cells(line) == list(COLUMNS):
            end = i
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            tables.append(lines[i:end])
    return tables


def readme_problems(spec: MethodSpec, readme: str) -> list[str]:
    """What the README gets wrong: no ``merge_method: NAME``, or a parameter table that is not the generated one."""
    problems = []
    if not re.search(rf"merge_method:\s*{re.escape(spec.name)}(?![\w-])", readme):
        problems.append(f"the README never shows `merge_method: {spec.name}` (add a recipe example)")
    expected = parameter_table(spec).splitlines()
    if not expected:
        return problems
    tables = _readme_tables(readme)
    if any(table == expected for table in tables):
        return problems
    fix = (f"paste the table `mergehub schema --method {spec.name} --markdown` prints (the README is read from the "
           "installed metadata: after editing README.md, run `pip install -e .` again)")
    if not tables:
        return [*problems, f"the README has no parameter table (a table headed `{TABLE_HEADER}`): {fix}"]
    want = {cells[0]: cells for cells in table_rows(spec)}

    def overlap(table: list[str]) -> int:
        return len({_cells(line)[0] if _cells(line) else "" for line in table} & set(want))

    table = max(tables, key=overlap)
    got = {}
    for line in table[2:]:
        cells = _cells(line)
        if cells:
            got.setdefault(cells[0], cells)
    found = []
    for key, cells in want.items():
        if key not in got:
            found.append(f"no row for parameter {key}")
            continue
        for column, mine, theirs in zip(COLUMNS, cells, got[key] + [""] * len(COLUMNS)):
            if mine != theirs:
                found.append(f"row {key}: {column} is '{theirs}', the schema gives '{mine}'")
    found += [f"row {key} names no parameter of the schema" for key in got if key not in want]
    if not found and table[1] != TABLE_RULE:
        found.append(f"the line under the header must be `{TABLE_RULE}`")
    if not found:
        found.append("the rows are not in the schema's order, or a row is repeated")
    return [*problems, f"README parameter table: {'; '.join(found)}; {fix}"]


# --- methods ------------------------------------------------------------------------------------------------------

def schema_problems(schema: dict[str, Any], instance: Any, what: str) -> list[str]:
    """Every error of ``instance`` against a JSON Schema, located."""
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{what} at {'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]


def example_value(prop: dict[str, Any], index: int = 0, varied: bool = False) -> Any:
    """A valid value for a parameter: the default, else one inside its bounds.

    ``varied`` picks values that exercise the maths more (the middle of a bounded number's range, a
    different weight per model) where the property is not ignored.
    """
    ignored = "x-ignored" in prop
    if prop["type"] == "boolean":
        return prop.get("default", True)
    if "enum" in prop:
        return prop.get("default", prop["enum"][0])
    if prop["type"] == "string":
        return prop.get("default", "")
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    if varied and not ignored and prop["type"] == "number":
        if low is not None and high is not None:
            return (low + high) / 2
        if "default" not in prop and high is None:
            return 0.3 + 0.2 * index + (low or 0)
    if "default" in prop:
        return prop["default"]
    low = 0 if low is None else low
    high = low + 1 if high is None else high
    return (low + high) / 2 if prop["type"] == "number" else int(low) + 1


def input_layout(spec: MethodSpec) -> tuple[int, int | None]:
    """How many inputs the kit merges, and the base's index (None when the method ignores the base)."""
    base = 0 if spec.base in ("required", "optional") else None
    count = max(spec.min_inputs, min(3, spec.max_inputs or 3))
    if base is not None:
        count = max(count, 1 + max(1, spec.min_non_base))
        if spec.max_inputs is not None:
            count = min(count, spec.max_inputs)
    return count, base


def example_parameters(spec: MethodSpec, varied: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(params, shared)`` for :func:`input_layout`'s inputs, as the core resolves them for one tensor."""
    count, base = input_layout(spec)
    props = spec.parameters.get("properties", {})
    params = [{p: example_value(props[p], i, varied) for p in props if props[p]["x-scope"] == "input"
               or (props[p]["x-scope"] == "non_base" and i != base)} for i in range(count)]
    shared = {p: example_value(props[p], 0, varied) for p in props if props[p]["x-scope"] == "shared"}
    return params, shared


def _inputs(spec: MethodSpec, tensors: list[torch.Tensor], params: list[dict[str, Any]], shared: dict[str, Any],
            name: str, offset: int = 0, full_shape: tuple[int, ...] | None = None) -> MergeInputs:
    import torch

    count, base = input_layout(spec)
    generator = torch.Generator().manual_seed(SEED) if spec.randomized else None
    models = [f"model-{i}" for i in range(count)]
    return MergeInputs(name, tensors, base, [dict(p) for p in params], dict(shared), models, generator,
                       offset=offset, full_shape=full_shape)


def _tensor_name(shape: tuple[int, ...]) -> str:
    return "model.layers.0.mlp.up_proj.weight" if len(shape) > 1 else "model.layers.0.input_layernorm.weight"


def _failure(what: str, exc: BaseException) -> str:
    return f"{what} raised {type(exc).__name__}: {exc}"


def identity_problems(spec: MethodSpec) -> list[str]:
    """Merging copies of one tensor must give that tensor back, whatever the method and its parameters."""
    import torch

    count, _ = input_layout(spec)
    params, shared = example_parameters(spec)
    problems = []
    for shape in ((6, 5), (7,)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        inputs = _inputs(spec, [x.clone() for _ in range(count)], params, shared, _tensor_name(shape), 0, shape)
        try:
            out = spec.load()(inputs)
            torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)
        except AssertionError as exc:
            first = str(exc).strip().splitlines()[0]
            problems.append(f"merging {count} identical {tuple(shape)} tensors does not give that tensor ({first})")
        except Exception as exc:
            problems.append(_failure(f"merging {count} identical {tuple(shape)} tensors", exc))
    return problems


def merge_blocks(spec: MethodSpec, inputs: MergeInputs, cuts: list[int]) -> torch.Tensor:
    """``inputs`` (whole tensors) merged as the executor merges them in row blocks cut at ``cuts``.

    ``elementwise`` and ``rows``: ``merge`` on each block of rows, with ``offset`` and ``full_shape``
    set; a factory: :func:`mergehub.testing.merge_in_blocks`. Each MergeInputs gets its own generator
    seeded alike, as the executor's do.
    """
    import torch

    from mergehub.testkit.tensors import merge_in_blocks

    if ":" in spec.blocks:
        return merge_in_blocks(import_object(spec.blocks), inputs, cuts, seed=SEED if spec.randomized else None)
    shape = tuple(inputs.full_shape or inputs.tensors[0].shape)
    merge = spec.load()
    blocks = []
    for start, stop in itertools.pairwise(cuts):
        generator = torch.Generator().manual_seed(SEED) if spec.randomized else None
        rows = [x[start:stop] for x in inputs.tensors]
        block = replace(inputs, tensors=rows, params=[dict(q) for q in inputs.params], shared=dict(inputs.shared),
                        offset=start, full_shape=shape, generator=generator)
        blocks.append(merge(block))
    return torch.cat(blocks)


def blocks_problems(spec: MethodSpec) -> list[str]:
    """With ``blocks`` declared, merging in row blocks must give the bytes of merging whole.

    A 12×8 tensor cut into rows [0, 1), [1, 5), [5, 12) and (except for ``rows``, which merges a 1-D
    tensor whole) a 1-D tensor of 10 elements cut at 3 and 4, with parameter values in the middle of
    their ranges and a different weight per model. Random methods get, for the whole tensor and for
    every block alike, a generator seeded the same way: what the executor guarantees them is exactly
    this, so the same ``--seed`` gives the same bytes whatever ``--max-memory`` is.
    """
    import torch

    from mergehub.testkit.tensors import related_tensors

    if spec.blocks == "none":
        return []
    count, _ = input_layout(spec)
    params, shared = example_parameters(spec, varied=True)
    check = spec.load_check() if spec.check else None
    if check is not None and check(params, shared):
        params, shared = example_parameters(spec)
    problems = []
    for shape, cuts in BLOCK_CASES:
        if spec.blocks == "rows" and len(shape) < 2:
            continue
        tensors = related_tensors(shape, torch.float32, n=count, seed=len(shape))
        ranges = list(itertools.pairwise(cuts))
        try:
            name = _tensor_name(shape)
            whole = spec.load()(_inputs(spec, [t.clone() for t in tensors], params, shared, name, 0, shape))
            blocked = merge_blocks(spec, _inputs(spec, tensors, params, shared, name, 0, shape), cuts)
        except Exception as exc:
            problems.append(_failure(f"merging a {shape} tensor in row blocks {ranges} (blocks: {spec.blocks})", exc))
            continue
        if blocked.shape != whole.shape or not torch.equal(blocked, whole):
            difference = ((blocked.double() - whole.double()).abs().max().item() if blocked.shape == whole.shape
                          else f"shape {tuple(blocked.shape)} instead of {tuple(whole.shape)}")
            problems.append(f"`blocks: {spec.blocks}` is not honoured: a {shape} tensor merged in row blocks {ranges} "
                            f"differs from the whole-tensor merge (largest difference {difference}); "
                            "a block must use `offset` and `full_shape`, or declare another `blocks`")
    return problems


def method_problems(spec: MethodSpec, readme: str | None = None) -> list[str]:
    """Everything wrong with one method spec (and, given its README's text, with the README)."""
    from mergehub.plugin.registry import core_schema

    if not isinstance(spec, MethodSpec):
        return [f"mergehub_register_methods returned {type(spec).__name__}, not MethodSpec"]
    problems = schema_problems(core_schema("method"), spec.parameters, "parameters schema")
    if problems:
        return problems  # the other checks read the schema
    declared = spec.parameters["x-mergehub"]["name"]
    if spec.name != declared:
        problems.append(f"the spec's name '{spec.name}' is not x-mergehub.name '{declared}'")
    required = set(spec.required_params())
    for name, prop in spec.parameters["properties"].items():
        if name not in required and "default" not in prop:
            problems.append(f"parameter '{name}' is neither required nor has a default")
        elif name not in required:
            scalar = {k: v for k, v in prop.items() if not k.startswith("x-")}
            problems += schema_problems(scalar, prop["default"], f"default of '{name}'")
    problems += [f"'{p}' in required is not a parameter" for p in sorted(required - set(spec.param_names()))]
    for what, path in (("implementation", spec.implementation), ("check", spec.check),
                       ("blocks factory", spec.blocks if ":" in spec.blocks else None)):
        if path:
            try:
                import_object(path)
            except Exception as exc:
                problems.append(_failure(f"importing the {what} {path}", exc))
    readme_found = readme_problems(spec, readme) if readme is not None else []
    if problems:
        return problems + readme_found  # the maths cannot be run
    if spec.check:
        refused = spec.load_check()(*example_parameters(spec))  # type: ignore[misc]
        if refused:
            problems.append(f"check refuses the defaults (other parameters inside their bounds): {refused}")
    return problems + readme_found + identity_problems(spec) + blocks_problems(spec)


# --- architectures ------------------------------------------------------------------------------------------------

def architecture_problems(spec: ArchitectureSpec, readme: str | None = None) -> list[str]:
    """Everything wrong with one architecture definition (and, given its README's text, with the README)."""
    from mergehub.models.architecture import from_definition
    from mergehub.plugin.registry import core_schema

    if not isinstance(spec, ArchitectureSpec):
        return [f"mergehub_register_architectures returned {type(spec).__name__}, not ArchitectureSpec"]
    problems = schema_problems(core_schema("architecture"), spec.definition, "definition")
    if problems:
        return problems
    try:
        from_definition(spec.definition)
    except Exception as exc:
        problems.append(_failure("reading the definition", exc))
    if readme is not None:
        problems += [f"the README never mentions {name}, which the definition serves"
                     for name in spec.architectures if name not in readme]
    return problems


# --- distributions ------------------------------------------------------------------------------------------------

def readme_of(distribution: str) -> str:
    """The README as installed: the long description in the distribution's metadata."""
    meta = metadata.metadata(distribution)
    return str(meta.get_payload() or meta.get("Description") or "")  # type: ignore[attr-defined]


def _load(distribution: str) -> tuple[PluginManager, list[str]]:
    """A plugin manager holding only ``distribution``'s entry points, and what went wrong loading them."""
    pm = PluginManager()
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return pm, ["is not installed (run `pip install -e .` in its folder)"]
    name, version = dist.metadata["Name"], dist.version
    entry_points = [ep for ep in dist.entry_points if ep.group == GROUP]
    if not entry_points:
        return pm, [(f"declares no entry point in group `{GROUP}` (add `[project.entry-points.{GROUP}]` "
                     f"with `{name} = \"<package>\"` to pyproject.toml)")]
    problems = []
    for ep in entry_points:
        if ep.name != name:
            problems.append(f"its entry point `{ep.name}` should be named like the distribution, `{name}`")
        try:
            pm.register_record(ep.load(), PluginRecord(ep.name, name, version))
            pm.check_pending()
        except Exception as exc:
            problems.append(_failure(f"loading the entry point `{ep.name} = {ep.value}`", exc))
    return pm, problems


def _registered(pm: PluginManager, hook: str) -> tuple[list[Any], list[str]]:
    specs, problems = [], []
    for impl in getattr(pm.hook, hook).get_hookimpls():
        try:
            specs += list(impl.function() or [])
        except Exception as exc:
            problems.append(_failure(hook, exc))
    return specs, problems


def _core_verdict(pm: PluginManager) -> list[str]:
    """What the core's registry says, for anything the kit's own checks let through."""
    from mergehub.plugin.registry import build_registry

    registry = build_registry(pm)
    return [f"the core refuses it: {r.error}" for r in registry.failures()] + registry.conflicts


def method_distribution_problems(distribution: str) -> list[str]:
    return _distribution_problems(distribution, "method", "mergehub_register_methods", method_problems,
                                  "registers no merge method (its module implements no mergehub_register_methods)")


def architecture_distribution_problems(distribution: str) -> list[str]:
    return _distribution_problems(
        distribution, "architecture", "mergehub_register_architectures", architecture_problems,
        "registers no architecture definition and derives none (its module implements neither "
        "mergehub_register_architectures nor mergehub_derive_architecture)",
        derives="mergehub_derive_architecture")


def _distribution_problems(distribution: str, kind: str, hook: str, spec_problems, nothing: str,
                           derives: str | None = None) -> list[str]:
    """The contract problems of one installed distribution of ``kind``: its specs, README and the core's verdict.

    ``derives`` names a hook that counts as registering something (an architecture plugin may only derive).
    """
    pm, problems = _load(distribution)
    if problems and not pm.get_plugins():
        return problems
    specs, failed = _registered(pm, hook)
    problems += failed
    derived = bool(derives and getattr(pm.hook, derives).get_hookimpls())
    if not specs and not failed and not derived:
        problems.append(nothing)
    readme = readme_of(distribution)
    if specs and not readme.strip():
        problems.append("has no README in its metadata (set `readme = \"README.md\"` under [project])")
    for spec in specs:
        label = getattr(spec, "name", "?")
        problems += [f"{kind} '{label}': {p}" for p in spec_problems(spec, readme)]
    return problems or _core_verdict(pm)


def _raise(distribution: str, problems: list[str]) -> None:
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise AssertionError(f"{distribution} breaks the mergehub plugin contract:\n{listed}")


def check_method_distribution(distribution: str) -> None:
    """Assert that an installed method distribution keeps the plugin contract (see the module's docstring)."""
    _raise(distribution, method_distribution_problems(distribution))


def check_architecture_distribution(distribution: str) -> None:
    """Assert that an installed architecture distribution keeps the plugin contract."""
    _raise(distribution, architecture_distribution_problems(distribution))


KIND_HOOKS: dict[str, tuple[str, ...]] = {
    "method": ("mergehub_register_methods",),
    "architecture": ("mergehub_register_architectures", "mergehub_derive_architecture"),
    "io": ("mergehub_register_io_backends",),
}


def plugin_distributions(kind: str, under: str | Path | None = None) -> list[str]:
    """Installed distributions whose ``mergehub`` entry point implements a hook of ``kind`` (``method``,
    ``architecture`` or ``io``), sorted; with ``under``, only those whose module lives in that folder.
    For ``pytest.mark.parametrize``; an entry point that fails to import is listed, so its check fails.
    """
    found = set()
    root = Path(under).resolve() if under is not None else None
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        name = dist.metadata["Name"] if dist is not None else ep.name
        try:
            module = ep.load()
        except Exception:
            found.add(name)
            continue
        if root is not None and not Path(getattr(module, "__file__", "") or "/").resolve().is_relative_to(root):
            continue
        if any(hasattr(module, hook) for hook in KIND_HOOKS[kind]):
            found.add(name)
    return sorted(found)


__all__ = [
    "architecture_distribution_problems", "architecture_problems", "blocks_problems", "check_architecture_distribution",
    "check_method_distribution", "identity_problems", "method_distribution_problems", "method_problems",
    "parameter_table", "plugin_distributions", "readme_problems",
]
