"""Merging in row blocks gives the same bytes as merging whole tensors, within the memory bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mergehub.maths.blocks import row_ranges
from mergehub.plan.estimate import peak_bytes
from mergehub.testing import load_state, run_cli

#: One recipe per file, ``{a}``, ``{b}``, ``{c}`` standing for three tiny models (a is the usual base).
RECIPE_DIR = Path(__file__).parent / "block_recipes"
RECIPES = {p.stem: p.read_text() for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def test_row_ranges_cover_every_row_once():
    assert row_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert row_ranges(3, 0) == [(0, 1), (1, 2), (2, 3)]
    assert row_ranges(0, 5) == [(0, 0)]


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_blocked_equals_whole(tmp_path, tiny_models, method):
    a, b, c = (tiny_models(n, layers=2, seed=s) for n, s in (("a", 1), ("b", 2), ("c", 3)))
    cfg = tmp_path / "r.yaml"
    cfg.write_text(RECIPES[method].replace("{a}", str(a)).replace("{b}", str(b)).replace("{c}", str(c)))
    for out, memory in (("whole", "1GB"), ("blocked", "2K")):  # 2 KB: a handful of rows per block
        result = run_cli("merge", cfg, "--out", tmp_path / out, "--max-memory", memory)
        assert result.returncode == 0, result.output
    whole, blocked = load_state(tmp_path / "whole"), load_state(tmp_path / "blocked")
    assert set(whole) == set(blocked)
    assert all(torch.equal(whole[n], blocked[n]) for n in whole)


def linear_plan(tiny_models):
    """The plan of an equal-weight linear merge of two tiny models, and the models."""
    from mergehub.plan.planner import make_plan
    from mergehub.plugin.registry import build_registry
    from mergehub.recipe.config import load_recipe
    from mergehub.recipe.yamlsource import parse_documents

    a, b = tiny_models("a", layers=2, seed=1), tiny_models("b", layers=2, seed=2)
    registry = build_registry()
    recipe = load_recipe(parse_documents(f"merge_method: linear\nparameters: {{weight: 1}}\n"
                                         f"models:\n  - model: {a}\n  - model: {b}\n")[0], registry)
    return make_plan(recipe, registry), a, b


def test_the_embedding_is_split_into_blocks_within_the_budget(tiny_models):
    from mergehub.run.compute import TensorComputer

    plan, a, b = linear_plan(tiny_models)
    embed = next(t for t in plan.tensors if t.name == "model.embed_tokens.weight")
    budget = peak_bytes(embed) // 5
    executor = TensorComputer(plan, max_memory=budget)
    ranges = executor.ranges(embed)
    assert ranges is not None and len(ranges) >= 5
    per_row = peak_bytes(embed) / embed.shape[0]
    assert all((stop - start) * per_row <= budget for start, stop in ranges)
    blocks = list(executor.compute(embed))
    assert len(blocks) == len(ranges)
    expected = load_state(a)["model.embed_tokens.weight"] + load_state(b)["model.embed_tokens.weight"]
    torch.testing.assert_close(torch.cat(blocks), expected / 2)
    plan.close()


def test_plan_memory_figure_follows_the_budget(tiny_models):
    from mergehub.plan.estimate import estimate

    plan, _, _ = linear_plan(tiny_models)
    whole = max(peak_bytes(t) for t in plan.tensors)
    assert estimate(plan, 1 << 40).peak_memory_bytes == whole  # tiny tensors: each is one block
    budget = whole // 5
    assert 0 < estimate(plan, budget).peak_memory_bytes <= budget
    plan.close()


def test_every_method_in_this_repository_merges_in_blocks_and_is_checked_here():
    """No method of plugins/methods holds a whole tensor: each declares blocks and has a recipe above."""
    from mergehub.plugin.registry import build_registry

    registry = build_registry()
    names = sorted(p.name for p in (Path(__file__).parents[1] / "plugins" / "methods").iterdir() if p.is_dir())
    assert len(names) >= 18
    for name in names:
        assert registry.method(name).blocks != "none", name
        assert any(r == name or r.startswith(f"{name}-") for r in RECIPES), f"no tests/block_recipes/{name}.yaml"


@pytest.mark.parametrize("method,extra", [("dare_ties", ""), ("della", ", epsilon: 0.2")])
def test_random_methods_on_large_tensors_ignore_blocks_and_threads(tmp_path, tiny_models, method, extra):
    """Tensors above randstream.SMALL_TENSOR draw from the addressable streams: any --max-memory, any thread count."""
    from mergehub.maths.randstream import SMALL_TENSOR

    base, a, b = (tiny_models(n, layers=1, seed=s, hidden=256, vocab=512) for n, s in (("big-a", 1), ("big-b", 2), ("big-c", 3)))
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"merge_method: {method}\nbase_model: {base}\nmodels:\n"
                      f"  - {{model: {a}, parameters: {{weight: 0.6, density: 0.5{extra}}}}}\n"
                      f"  - {{model: {b}, parameters: {{weight: 0.5, density: 0.3}}}}\ndtype: bfloat16\n")
    runs = {"whole": ("1GB", "2"), "blocked": ("16K", "2"), "one-thread": ("16K", "1")}
    for out, (memory, threads) in runs.items():
        result = run_cli("merge", recipe, "--out", tmp_path / out, "--seed", "3", "--max-memory", memory,
                         env={"OMP_NUM_THREADS": threads})
        assert result.returncode == 0, result.output
    whole = load_state(tmp_path / "whole")
    assert max(t.numel() for t in whole.values()) > SMALL_TENSOR
    for out in ("blocked", "one-thread"):
        other = load_state(tmp_path / out)
        assert all(torch.equal(whole[n], other[n]) for n in whole), out
