"""Parameter resolution (mergekit semantics, reference §1.5) against hand-computed values.

Unit tests of mergehub.recipe.params, then one planner-level test of which tensor name each kind of parameter is
matched against and which slice and gradient value the non-layer tensors use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mergehub.plan.planner import make_plan
from mergehub.plugin.registry import build_registry
from mergehub.recipe.config import load_recipe
from mergehub.recipe.params import UNSET, evaluate, interpolate, layer_position, resolve
from mergehub.recipe.yamlsource import parse_documents

Q = "model.layers.3.self_attn.q_proj.weight"
UP = "model.layers.3.mlp.up_proj.weight"
EMBED = "model.embed_tokens.weight"


# -- gradients -----------------------------------------------------------------------------------------------------
def test_layer_position():
    assert [layer_position(k, 4) for k in range(4)] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert [layer_position(k, 2) for k in range(2)] == [0.0, 1.0]
    assert layer_position(0, 1) == 1.0  # a one-layer slice sits at the END of the gradient


def test_reference_example_1_2_5_over_four_layers():
    # t = 0, 1/3, 2/3, 1 -> x = t * 2 = 0, 2/3, 4/3, 2
    # -> 1;  1 + 2/3 * (2 - 1) = 1.6667;  2 + 1/3 * (5 - 2) = 3;  5
    values = [interpolate([1, 2, 5], layer_position(k, 4)) for k in range(4)]
    assert values == pytest.approx([1, 5 / 3, 3, 5])
    assert round(values[1], 4) == 1.6667


def test_one_layer_slice_takes_the_last_value():
    assert interpolate([1, 2, 5], layer_position(0, 1)) == 5
    assert interpolate([0.3, 0.9], layer_position(0, 1)) == pytest.approx(0.9)


def test_interpolation_between_points():
    assert interpolate([0, 1], 0.25) == pytest.approx(0.25)
    assert interpolate([10, 20, 40], 0.75) == pytest.approx(30)  # x = 1.5: halfway between 20 and 40
    assert interpolate([2, 4], 0.0) == 2
    assert interpolate([7], 0.6) == 7  # a one-element list is constant


def test_scalars_pass_through_unchanged():
    assert interpolate(0.5, 0.3) == 0.5
    assert interpolate(True, 0.9) is True
    assert interpolate("x", 0.1) == "x"


def test_non_numeric_lists_pick_by_floor():
    # index = floor(t * (m - 1)), no interpolation
    assert interpolate(["a", "b", "c"], 0.0) == "a"
    assert interpolate(["a", "b", "c"], 0.49) == "a"  # floor(0.98) = 0
    assert interpolate(["a", "b", "c"], 0.5) == "b"  # floor(1.0) = 1
    assert interpolate(["a", "b", "c"], 0.99) == "b"  # floor(1.98) = 1
    assert interpolate(["a", "b", "c"], 1.0) == "c"
    assert interpolate([True, False], 0.9) is True  # floor(0.9) = 0
    assert interpolate([True, False], 1.0) is False
    assert interpolate([1, "x", 3], 0.75) == "x"  # any string disables interpolation: floor(1.5) = 1


# -- filters -------------------------------------------------------------------------------------------------------
def test_filter_is_a_plain_substring():
    assert evaluate({"filter": "self_attn", "value": 2}, Q, 0.0) == 2
    assert evaluate({"filter": "mlp", "value": 2}, Q, 0.0) is UNSET
    # not a regex: '.' is a literal dot, so "layers.3" does not match "layersX3"
    assert evaluate({"filter": "layers.3", "value": 2}, "model.layersX3.mlp", 0.0) is UNSET
    assert evaluate({"filter": "layers.3", "value": 2}, Q, 0.0) == 2
    # not a glob either
    assert evaluate({"filter": "layers.*.self_attn", "value": 2}, Q, 0.0) is UNSET
    assert evaluate({"filter": "self_*", "value": 2}, Q, 0.0) is UNSET


def test_star_and_null_filters_match_everything():
    for name in (Q, UP, EMBED):
        assert evaluate({"filter": "*", "value": 4}, name, 0.0) == 4
        assert evaluate({"filter": None, "value": 5}, name, 0.0) == 5
        assert evaluate({"value": 6}, name, 0.0) == 6


def test_first_matching_filter_wins():
    setting = [{"filter": "mlp", "value": 1}, {"filter": "up_proj", "value": 2}, {"filter": "*", "value": 3}]
    assert evaluate(setting, UP, 0.0) == 1  # both mlp and up_proj match: the first listed wins
    assert evaluate(setting, Q, 0.0) == 3
    reordered = [setting[1], setting[0], setting[2]]
    assert evaluate(reordered, UP, 0.0) == 2


def test_filtered_value_can_be_a_gradient():
    setting = [{"filter": "self_attn", "value": [0, 1]}, {"value": [10, 20, 40]}]
    assert evaluate(setting, Q, 0.5) == pytest.approx(0.5)
    assert evaluate(setting, UP, 0.75) == pytest.approx(30)


def test_no_match_and_empty_list_are_unset():
    assert evaluate([{"filter": "mlp", "value": 1}], Q, 0.0) is UNSET
    assert evaluate([], Q, 0.0) is UNSET
    assert evaluate(None, Q, 0.0) is UNSET


# -- precedence ----------------------------------------------------------------------------------------------------
def test_first_level_with_a_value_wins():
    levels = [{"weight": 1}, {"weight": 2}, {"weight": 3}]
    assert resolve("weight", levels, Q, 0.0) == 1
    assert resolve("weight", [{}, {"weight": 2}, {"weight": 3}], Q, 0.0) == 2


def test_no_match_falls_through_to_the_next_level():
    levels = [{"weight": [{"filter": "mlp", "value": 1}]},
              {"weight": [{"filter": "q_proj", "value": 2}]},
              {"weight": 3}]
    assert resolve("weight", levels, UP, 0.0) == 1
    assert resolve("weight", levels, Q, 0.0) == 2
    assert resolve("weight", levels, EMBED, 0.0) == 3


def test_empty_list_and_null_fall_through():
    assert resolve("weight", [{"weight": []}, {"weight": 3}], Q, 0.0) == 3
    assert resolve("weight", [{"weight": None}, {}, {"weight": 0}], Q, 0.0) == 0  # 0 is a value, not "unset"
    assert resolve("weight", [{"weight": False}, {"weight": True}], Q, 0.0) is False


def test_nothing_anywhere_is_unset():
    assert resolve("weight", [{}, {"other": 1}, {"weight": [{"filter": "mlp", "value": 1}]}], Q, 0.0) is UNSET
    assert resolve("weight", [], Q, 0.0) is UNSET


def test_gradient_is_evaluated_at_the_given_position():
    levels = [{}, {"weight": [1, 2, 5]}]
    assert [resolve("weight", levels, Q, layer_position(k, 4)) for k in range(4)] == pytest.approx([1, 5 / 3, 3, 5])


# -- planner: which name a filter sees, and non-layer tensors ----------------------------------------------------
def test_planner_filter_names_and_non_layer_tensors(tiny_models):
    """Two slices (output layers 0-1 from source layers 2-3; output layers 2-3 from b's layers 0-1).

    Per-model parameters (weight) match the SOURCE name, at every level; the shared one (normalize) matches the
    OUTPUT name. Embeddings come from the first slice, norm and lm_head from the last, both at t = 0.
    """
    a, b = tiny_models("a", layers=4, seed=1), tiny_models("b", layers=4, seed=2)
    text = f"""
merge_method: linear
parameters:
  normalize:
    - {{filter: "layers.3.", value: false}}
    - {{value: true}}
slices:
  - sources:
      - model: {a}
        layer_range: [2, 4]
        parameters:
          weight:
            - {{filter: "layers.2.", value: 10}}
            - {{value: 1}}
      - model: {b}
        layer_range: [2, 4]
    parameters:
      weight:
        - {{filter: "layers.0.", value: 5}}
        - {{filter: "layers.3.", value: 9}}
        - {{value: [4, 6]}}
      normalize:
        - {{filter: "layers.0.", value: false}}
        - {{value: true}}
  - sources:
      - model: {b}
        layer_range: [0, 2]
        parameters:
          weight: [3, 7]
"""
    registry = build_registry()
    (document,) = parse_documents(text, "params.yml")
    plan = make_plan(load_recipe(document, registry), registry)
    try:
        tensors = {t.name: t for t in plan.tensors}
        paths = [Path(m.ref.path) for m in plan.models]

        def table(name: str) -> tuple[list[tuple[Path, str]], list[float], bool]:
            t = tensors[name]
            inputs = [(paths[i.model], i.name) for i in t.inputs]
            return inputs, [p["weight"] for p in t.params], t.shared["normalize"]

        q = "model.layers.{}.self_attn.q_proj.weight"
        # output layer 0 <- source layer 2 of a and b (k = 0, t = 0)
        #   a: own filter "layers.2." matches the source name -> 10 (the output name layers.0 would give 1)
        #   b: slice filter "layers.0." must NOT match (source is layer 2) -> gradient [4, 6] at t=0 -> 4
        #   normalize (shared): slice filter "layers.0." matches the OUTPUT name -> False
        assert table(q.format(0)) == ([(a, q.format(2)), (b, q.format(2))], [10, 4], False)
        # output layer 1 <- source layer 3 (k = 1, t = 1)
        #   a: "layers.2." no match -> 1;  b: slice filter "layers.3." matches the source name -> 9
        #   normalize: "layers.0." does not match output layers.1 -> True (slice level; top level not reached)
        assert table(q.format(1)) == ([(a, q.format(3)), (b, q.format(3))], [1, 9], True)
        # output layers 2, 3 <- b's layers 0, 1; weight [3, 7] at t = 0, 1
        #   normalize from the top level, matched on the OUTPUT name: "layers.3." -> False only for output layer 3
        assert table(q.format(2)) == ([(b, q.format(0))], [3], True)
        assert table(q.format(3)) == ([(b, q.format(1))], [7], False)
        # embeddings: first slice's sources and parameters, t = 0: a -> 1 (no layer filter matches), b -> 4
        assert table(EMBED) == ([(a, EMBED), (b, EMBED)], [1, 4], True)
        # final norm and lm_head: last slice's sources and parameters, first gradient value 3 (not 7)
        for name in ("model.norm.weight", "lm_head.weight"):
            assert table(name) == ([(b, name)], [3], True)
        assert plan.num_layers == 4
        assert len(plan.tensors) == 3 + 4 * 9  # embed, norm, lm_head + nine tensors per layer
    finally:
        plan.close()


def test_yaml_reads_exponent_numbers_and_stays_safe():
    import pytest
    from mergehub.common.errors import MergehubError
    from mergehub.recipe.yamlsource import parse_documents

    data = parse_documents("a: 1e-4\nb: 1\nc: 1.5e3\nd: x1e4\ne: '1e-4'\nf: 2E+2\n")[0].data
    assert data == {"a": 1e-4, "b": 1, "c": 1500.0, "d": "x1e4", "e": "1e-4", "f": 200.0}
    with pytest.raises(MergehubError, match="not valid YAML"):
        parse_documents("a: !!python/object/apply:os.system ['true']\n")
