"""The per-layer config rules and the other-stack expansion, checked against patterns written out by hand."""

from __future__ import annotations

import pytest
from mergehub.common.errors import MergehubError
from mergehub.models.architecture import LayerKey, Stack, WeightDef, from_definition
from mergehub.plan.layerconfig import _rule_value, _source_marked

LEADING = LayerKey("first_k_dense_replace", "leading_count")
PERIOD = LayerKey("decoder_sparse_step", "period")


@pytest.mark.parametrize("marks, expected", [
    ([True, False, False, False], 1),
    ([True, True, False], 2),
    ([False, False], 0),
    ([True, True], 2),
    ([True, False, True], None),  # dense layers that are not a prefix: no count states them
])
def test_leading_count(marks: list[bool], expected: int | None) -> None:
    assert _rule_value(LEADING, marks) == expected
    if expected is not None:
        assert [_source_marked(LEADING, expected, i) for i in range(len(marks))] == marks


@pytest.mark.parametrize("marks, expected", [
    ([True, True, True], 1),
    ([False, True, False, True], 2),
    ([False, False, True, False, False, True], 3),
    ([False, True, True, False], None),
])
def test_period(marks: list[bool], expected: int | None) -> None:
    assert _rule_value(PERIOD, marks) == expected
    if expected is not None:
        assert [_source_marked(PERIOD, expected, i) for i in range(len(marks))] == marks


def test_an_other_stack_expands_by_its_own_layer_count() -> None:
    definition = {
        "name": "vlm", "architectures": ["VlmForConditionalGeneration"], "num_layers_key": "text_config.num_hidden_layers",
        "pre_weights": [{"name": "lm.embed.weight", "vocab_axis": 0}],
        "layer_weights": [{"name": "lm.layers.{layer}.w"}], "post_weights": [{"name": "lm.norm.weight"}],
        "stacks": [{"name": "vision", "num_layers_key": "vision_config.depth",
                    "weights": [{"name": "vision.blocks.{layer}.w"}, {"name": "vision.blocks.{layer}.b", "varies": True}]}],
    }
    (stack,) = from_definition(definition).stacks

    weights = stack.expand({"vision_config": {"depth": 2}})

    assert [w.name for w in weights] == ["vision.blocks.0.w", "vision.blocks.0.b", "vision.blocks.1.w", "vision.blocks.1.b"]
    assert [w.optional for w in weights] == [False, True, False, True]
    with pytest.raises(MergehubError, match="vision_config.depth"):
        Stack("vision", "vision_config.depth", (WeightDef("v.{layer}"),)).expand({})
