"""mergehub plugin: the ``dare_linear`` merge method."""

from __future__ import annotations

from mergehub import MethodSpec, hookimpl


@hookimpl
def mergehub_register_methods() -> list[MethodSpec]:
    return [MethodSpec.from_package(__name__)]
