"""Discover plugins from installed distributions and build a plugin manager.

Only entry points of group ``mergehub`` in installed distributions are loaded, never
arbitrary paths. Each entry point is imported on its own: a plugin that fails to
import is recorded (distribution, version, error) and the rest keep working.

Switches (comma-separated distribution or entry-point names):
``MERGEHUB_LOAD_PLUGINS`` loads only these (set but empty: none);
``MERGEHUB_DISABLE_PLUGINS`` skips these.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

import pluggy

from mergehub.plugin import builtin, hookspecs

GROUP = "mergehub"


@dataclass(frozen=True)
class PluginRecord:
    """What we know of one plugin: where it came from and whether it loaded."""

    name: str  # entry-point name (by convention the distribution's name)
    distribution: str
    version: str
    error: str | None = None
    disabled: bool = False

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        return f"failed: {self.error}" if self.error else "ok"


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers each plugin's distribution and failures."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}

    def register_record(self, module: object, record: PluginRecord) -> None:
        self.register(module, name=record.name)
        self.records[record.name] = record

    def fail(self, record: PluginRecord) -> None:
        self.records[record.name] = record
        if self.get_plugin(record.name) is not None:
            self.unregister(name=record.name)


def _names_from_env(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _dist_of(entry_point: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return entry_point.name, "?"
    return dist.metadata["Name"] or entry_point.name, dist.version or "?"


def load_entrypoints(pm: PluginManager) -> None:
    """Import every ``mergehub`` entry point, isolating failures."""
    allow = _names_from_env("MERGEHUB_LOAD_PLUGINS")
    deny = _names_from_env("MERGEHUB_DISABLE_PLUGINS") or set()
    seen: set[tuple[str, str]] = set()
    for entry_point in metadata.entry_points(group=GROUP):
        distribution, version = _dist_of(entry_point)
        key = (entry_point.name, entry_point.value)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        names = {entry_point.name, distribution}
        record = PluginRecord(entry_point.name, distribution, version)
        if (allow is not None and not names & allow) or names & deny:
            pm.records[entry_point.name] = PluginRecord(
                entry_point.name, distribution, version, disabled=True
            )
            continue
        try:
            module = entry_point.load()
            pm.register_record(module, record)
            pm.check_pending()  # an unknown hook (typo, newer core) fails this plugin only
        except Exception as exc:  # a broken plugin must not take down the others
            pm.fail(PluginRecord(entry_point.name, distribution, version, error=_describe(exc)))
    pm.check_pending()


def _core_version() -> str:
    from mergehub.common.version import __version__

    return __version__


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def make_plugin_manager(
    entrypoints: bool = True, plugins: Iterable[tuple[ModuleType | object, str]] = ()
) -> PluginManager:
    """A fresh manager: installed entry points (optional) plus explicitly given plugins.

    ``plugins`` are ``(module_or_object, name)`` pairs, handy in tests.
    """
    pm = PluginManager()
    pm.register_record(builtin, PluginRecord(builtin.NAME, "mergehub", _core_version()))
    if entrypoints:
        load_entrypoints(pm)
    for plugin, name in plugins:
        pm.register_record(plugin, PluginRecord(name, name, "local"))
    pm.check_pending()
    return pm
