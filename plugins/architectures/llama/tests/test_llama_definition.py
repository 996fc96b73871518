"""The llama definition names exactly the tensors transformers writes, tied or not."""

from __future__ import annotations

import jsonschema
import pytest
from mergehub.testing import build_registry, check_definition, core_schema

SPEC = build_registry().architectures["llama"].spec


def test_definition_is_valid():
    jsonschema.Draft202012Validator(core_schema("architecture")).validate(SPEC.definition)
    assert "LlamaForCausalLM" in SPEC.architectures


@pytest.mark.parametrize("tied", [False, True])
def test_covers_a_real_checkpoint(tiny_models, tied):
    present = check_definition(SPEC.definition, tiny_models("llama-def", layers=3, tied=tied))
    assert ("lm_head.weight" in present) == (not tied)
