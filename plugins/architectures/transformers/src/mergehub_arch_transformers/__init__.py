"""mergehub plugin: architecture definitions derived from transformers for any family it can build.

Registered definitions (mergehub-arch-llama, in-house JSON plugins) still win; this plugin answers
only for models no definition names, and name inference stays the core's last resort.
"""

from __future__ import annotations

from typing import Any

from mergehub import ArchitectureSpec, hookimpl


@hookimpl
def mergehub_derive_architecture(config: dict[str, Any], tensor_names: list[str],
                                 trust_remote_code: bool) -> ArchitectureSpec | None:
    from mergehub_arch_transformers.derive import derive

    return derive(config, tensor_names, trust_remote_code)
