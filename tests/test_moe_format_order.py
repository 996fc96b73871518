"""The DeepSeek MoE format is tried after the other formats, whatever order the plugins are discovered in
(Llama sources fit Mixtral too, and mergekit-moe's default for them is Mixtral)."""

from __future__ import annotations

import mergehub_moe_deepseek
from mergehub import MoEFormatSpec, hookimpl
from mergehub.plugin.discovery import make_plugin_manager
from mergehub.plugin.registry import build_registry


class Other:
    """A stand-in for another format plugin (Mixtral, say) that also takes Llama sources."""

    @hookimpl
    def mergehub_register_moe_formats(self) -> list[MoEFormatSpec]:
        return [MoEFormatSpec("other", "another format", "builtins:object")]


def test_deepseek_is_considered_after_the_other_formats_whatever_the_discovery_order():
    for plugins in ([(mergehub_moe_deepseek, "deepseek"), (Other(), "other")],
                    [(Other(), "other"), (mergehub_moe_deepseek, "deepseek")]):
        registry = build_registry(make_plugin_manager(entrypoints=False, plugins=plugins))
        assert list(registry.moe_formats) == ["other", "deepseek"]
