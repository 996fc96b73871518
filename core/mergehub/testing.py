"""The test kit for mergehub and its plugins: real tiny checkpoints, the real CLI, the plugin contract.

Part of the public API, with :mod:`mergehub` and :mod:`mergehub.maths`. Load it as a pytest plugin
(``-p mergehub.testing`` or ``pytest_plugins = ["mergehub.testing"]``) for the fixtures; import the
functions directly. CONTRIBUTING.md's "Test fixtures" table describes each name.
"""

from __future__ import annotations

from mergehub.testkit.fixtures import (
                                       FAMILIES,
                                       HUB_COMMIT,
                                       CliResult,
                                       HeadersOnly,
                                       architecture_problems,
                                       build_registry,
                                       build_tiny,
                                       build_tiny_model,
                                       check_architecture_distribution,
                                       check_definition,
                                       check_method_distribution,
                                       core_schema,
                                       flat_output,
                                       forward_pass,
                                       fresh_registry,
                                       load_state,
                                       merge_in_blocks,
                                       merge_ok,
                                       mergehub_cli,
                                       method_problems,
                                       model_class,
                                       open_reader,
                                       parameter_table,
                                       plan_problems,
                                       plugin_distributions,
                                       populate_hub_cache,
                                       related_tensors,
                                       run_cli,
                                       stack_by_hand,
                                       tiny_config,
                                       tiny_models,
                                       write_tiny_tokenizer,
)

__all__ = [
    "FAMILIES", "HUB_COMMIT", "CliResult", "HeadersOnly", "architecture_problems", "build_registry", "build_tiny",
    "build_tiny_model", "check_architecture_distribution", "check_definition", "check_method_distribution",
    "core_schema", "flat_output", "forward_pass", "fresh_registry", "load_state", "merge_in_blocks", "merge_ok",
    "mergehub_cli", "method_problems", "model_class", "open_reader", "parameter_table", "plan_problems",
    "plugin_distributions", "populate_hub_cache", "related_tensors", "run_cli", "stack_by_hand", "tiny_config",
    "tiny_models", "write_tiny_tokenizer",
]
