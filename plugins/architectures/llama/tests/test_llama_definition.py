"""The llama definition names exactly the tensors transformers writes, tied or not."""

from __future__ import annotations

import jsonschema
import pytest
from safetensors import safe_open

from mergehub.architecture import from_definition
from mergehub.registry import build_registry, core_schema


@pytest.fixture(scope="module")
def spec():
    return build_registry().architectures["llama"].spec


def test_definition_is_valid(spec):
    jsonschema.Draft202012Validator(core_schema("architecture")).validate(spec.definition)
    assert "LlamaForCausalLM" in spec.architectures


def names_from_definition(spec, layers, present):
    layout = from_definition(spec.definition)
    names = [w.name for w in layout.pre + layout.post]
    names += [w.at(i) for w in layout.layer for i in range(layers)]
    required = {w.name for w in layout.pre + layout.post if not w.optional}
    required |= {w.at(i) for w in layout.layer if not w.optional for i in range(layers)}
    return set(names), required


@pytest.mark.parametrize("tied", [False, True])
def test_covers_a_real_checkpoint(tiny_models, spec, tied):
    path = tiny_models("llama-def", layers=3, tied=tied)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        present = set(f.keys())
    possible, required = names_from_definition(spec, 3, present)
    assert present <= possible  # nothing in the checkpoint is unknown to the definition
    assert required <= present  # nothing required is missing
    assert ("lm_head.weight" in present) == (not tied)
