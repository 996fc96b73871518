"""Everything the installed plugins provide, checked and indexed by name.

Built from a plugin manager: each hook implementation is called on its own so that
every spec is attributed to the distribution that provided it. A spec that fails its
schema marks its plugin as failed (the others keep working); two distributions
claiming one name make a conflict that names both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any, Generic, TypeVar

import jsonschema

from mergehub.common.errors import MergehubError, PluginError, unknown_name
from mergehub.plugin import catalog
from mergehub.plugin.discovery import PluginManager, PluginRecord, make_plugin_manager
from mergehub.plugin.specs import (
    ArchitectureSpec,
    ExecutorSpec,
    IOBackendSpec,
    MethodSpec,
    MoEFormatSpec,
)

S = TypeVar("S")

KINDS = {
    "method": "mergehub_register_methods",
    "architecture": "mergehub_register_architectures",
    "io": "mergehub_register_io_backends",
    "executor": "mergehub_register_executors",
    "moe_format": "mergehub_register_moe_formats",
}


@cache
def core_schema(name: str) -> dict[str, Any]:
    """One of the core's JSON Schemas (``method`` or ``architecture``)."""
    text = resources.files("mergehub.plugin").joinpath(f"schemas/{name}.schema.json").read_text("utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class Registered(Generic[S]):
    spec: S
    plugin: PluginRecord


@dataclass
class Registry:
    """Lookup of methods, architectures and IO backends by name."""

    methods: dict[str, Registered[MethodSpec]] = field(default_factory=dict)
    architectures: dict[str, Registered[ArchitectureSpec]] = field(default_factory=dict)
    io_backends: dict[str, Registered[IOBackendSpec]] = field(default_factory=dict)
    executors: dict[str, Registered[ExecutorSpec]] = field(default_factory=dict)
    moe_formats: dict[str, Registered[MoEFormatSpec]] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    plugins: dict[str, PluginRecord] = field(default_factory=dict)
    derivers: list[tuple[Callable[..., Any], PluginRecord]] = field(default_factory=list)

    def check(self) -> None:
        """Raise if two plugins claim one name: which one wins would be an accident."""
        if self.conflicts:
            raise PluginError(
                "; ".join(self.conflicts),
                hint="uninstall one of the two distributions (pip uninstall NAME), "
                "or switch one off with MERGEHUB_DISABLE_PLUGINS=NAME",
            )

    def method(self, name: str) -> MethodSpec:
        if name not in self.methods:
            message, hint = self.unknown_method(name)
            raise MergehubError(message, hint=hint)
        return self.methods[name].spec

    def io_backend(self, name: str) -> IOBackendSpec:
        if name not in self.io_backends:
            message, hint = unknown_name("IO backend", name, self.io_backends)
            found = catalog.io_backend_hint(name, self.plugins.values())
            raise MergehubError(message, hint=f"installed IO backends: {_listing(self.io_backends)}. {found}"
                                if found else hint)
        return self.io_backends[name].spec

    def executor(self, name: str) -> ExecutorSpec:
        if name not in self.executors:
            message, _ = unknown_name("executor", name, self.executors)
            found = catalog.executor_hint(name, self.plugins.values())
            raise MergehubError(message, hint=f"installed executors: {_listing(self.executors)}" + (f". {found}" if found else ""))
        return self.executors[name].spec

    def unknown_method(self, name: str) -> tuple[str, str]:
        """Message and hint for a merge method no installed plugin provides: the installed ones, and
        which distribution of the standard set provides ``name`` (:mod:`mergehub.plugin.catalog`)."""
        message, hint = unknown_name("merge method", name, self.methods)
        found = catalog.method_hint(name, self.plugins.values())
        return message, (f"installed merge methods: {_listing(self.methods)}. {found}" if found else hint)

    def missing_architecture_hint(self, architectures: list[str]) -> str:
        """Which distribution would serve models of these config.json ``architectures`` values."""
        return catalog.architecture_hint(architectures, self.plugins.values())

    def loaded(self) -> bool:
        """Whether any plugin provides anything (a method, architecture, IO backend or derivation)."""
        return bool(self.methods or self.architectures or self.io_backends or self.derivers)

    def architecture_for(self, arch_name: str, model_type: str | None) -> ArchitectureSpec | None:
        """The definition serving config.json's ``architectures[0]``, ties broken by model_type."""
        candidates = [r.spec for r in self.architectures.values() if arch_name in r.spec.architectures]
        if len(candidates) > 1:
            candidates = [c for c in candidates if c.definition.get("model_type") == model_type]
        return candidates[0] if len(candidates) == 1 else None

    def derive_architecture(self, config: dict[str, Any], tensor_names: list[str],
                            trust_remote_code: bool = False) -> tuple[ArchitectureSpec, str] | None:
        """A definition derived by a plugin (``mergehub_derive_architecture``) and the distribution
        that derived it, or None when no plugin can. A plugin that fails here gives a clear error:
        quietly falling back to name inference would merge with a worse layout."""
        for derive, record in self.derivers:
            try:
                spec = derive(config=config, tensor_names=tensor_names, trust_remote_code=trust_remote_code)
            except MergehubError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin {record.distribution} failed to derive an architecture: "
                                  f"{type(exc).__name__}: {exc}", hint="report it to the plugin's authors, or switch it "
                                  f"off with MERGEHUB_DISABLE_PLUGINS={record.distribution}") from exc
            if spec is None:
                continue
            problem = _validate_spec("architecture", spec)
            if problem:
                raise PluginError(f"plugin {record.distribution} derived an invalid definition: {problem}",
                                  hint="report it to the plugin's authors")
            return spec, record.distribution
        return None

    def failures(self) -> list[PluginRecord]:
        return [r for r in self.plugins.values() if r.error]


def _listing(table: dict[str, Any]) -> str:
    return ", ".join(sorted(table)) or "none"


def _validate_spec(kind: str, spec: Any) -> str | None:
    """Why a spec is unusable, or None when it is fine."""
    if kind == "method":
        if not isinstance(spec, MethodSpec):
            return f"mergehub_register_methods returned {type(spec).__name__}, not MethodSpec"
        return _schema_problem(core_schema("method"), spec.parameters, f"method '{spec.name}'") or _defaults_problem(spec)
    if kind == "architecture":
        if not isinstance(spec, ArchitectureSpec):
            return f"mergehub_register_architectures returned {type(spec).__name__}, not ArchitectureSpec"
        return _schema_problem(core_schema("architecture"), spec.definition, f"architecture '{spec.name}'")
    if kind == "executor":
        if not isinstance(spec, ExecutorSpec):
            return f"mergehub_register_executors returned {type(spec).__name__}, not ExecutorSpec"
        return _schema_problem(OPTIONS_METASCHEMA, spec.options, f"executor '{spec.name}' options")
    if kind == "moe_format":
        if not isinstance(spec, MoEFormatSpec):
            return f"mergehub_register_moe_formats returned {type(spec).__name__}, not MoEFormatSpec"
        return None
    if not isinstance(spec, IOBackendSpec):
        return f"mergehub_register_io_backends returned {type(spec).__name__}, not IOBackendSpec"
    return None


#: An executor's options schema: an object of named settings (values come from the command line as text).
OPTIONS_METASCHEMA = {"type": "object", "required": ["type"], "properties": {
    "type": {"const": "object"}, "properties": {"type": "object"}}}


def _schema_problem(schema: dict, instance: Any, what: str) -> str | None:
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.path))
    if not errors:
        return None
    first = errors[0]
    path = "/".join(str(p) for p in first.absolute_path) or "(top level)"
    return f"invalid schema for {what} at {path}: {first.message}"


def _defaults_problem(spec: MethodSpec) -> str | None:
    """Every parameter must be required or carry a default that satisfies its own schema."""
    required = set(spec.required_params())
    for name, prop in spec.parameters.get("properties", {}).items():
        if name in required:
            continue
        if "default" not in prop:
            return f"parameter '{name}' of method '{spec.name}' is neither required nor has a default"
        problem = _schema_problem({k: v for k, v in prop.items() if not k.startswith("x-")}, prop["default"], f"default of '{name}'")
        if problem:
            return problem
    return None


def build_registry(pm: PluginManager | None = None) -> Registry:
    """Call every plugin's registration hooks and index what they return."""
    pm = pm or make_plugin_manager()
    registry = Registry(plugins=dict(pm.records))
    owners: dict[tuple[str, str], PluginRecord] = {}
    tables = {"method": registry.methods, "architecture": registry.architectures, "io": registry.io_backends,
              "executor": registry.executors, "moe_format": registry.moe_formats}
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            record = registry.plugins.get(impl.plugin_name) or PluginRecord(impl.plugin_name, impl.plugin_name, "?")
            if record.error:
                continue
            try:
                specs = list(impl.function() or [])
                problems = [p for p in (_validate_spec(kind, s) for s in specs) if p]
            except Exception as exc:  # isolate a plugin whose hook itself crashes
                problems, specs = [f"{hook_name} raised {type(exc).__name__}: {exc}"], []
            if problems:
                registry.plugins[impl.plugin_name] = replace(record, error=problems[0])
                continue
            for spec in specs:
                key = (kind, spec.name)
                if key in owners and owners[key].distribution != record.distribution:
                    registry.conflicts.append(
                        f"{kind} '{spec.name}' is provided by both '{owners[key].distribution}' "
                        f"and '{record.distribution}'"
                    )
                    continue
                owners[key] = record
                tables[kind][spec.name] = Registered(spec, record)
    for impl in reversed(pm.hook.mergehub_derive_architecture.get_hookimpls()):  # pluggy calls the last registered first
        record = registry.plugins.get(impl.plugin_name) or PluginRecord(impl.plugin_name, impl.plugin_name, "?")
        if not record.error:
            registry.derivers.append((impl.function, record))
    # Drop whatever a plugin registered before one of its specs turned out broken.
    for table in tables.values():
        for name in [n for n, r in table.items() if registry.plugins.get(r.plugin.name, r.plugin).error]:
            del table[name]
    return registry
