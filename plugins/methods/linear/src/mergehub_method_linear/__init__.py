"""mergehub plugin: the ``linear`` merge method."""

from __future__ import annotations

from importlib import resources

from mergehub import MethodSpec, hookimpl


@hookimpl
def mergehub_register_methods() -> list[MethodSpec]:
    schema = resources.files(__name__).joinpath("parameters.schema.json")
    return [MethodSpec.from_schema_file(str(schema), "mergehub_method_linear.method:merge")]
