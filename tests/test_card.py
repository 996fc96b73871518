"""The model card: Hub front matter that huggingface_hub parses, the method and its paper, inputs, the recipe."""

from __future__ import annotations

from huggingface_hub import ModelCard
from mergehub.testing import populate_hub_cache, run_cli


def test_card_front_matter_method_models_and_recipe(tmp_path, tiny_models):
    base, a, b = (tiny_models(n, layers=2, seed=s) for n, s in (("base", 1), ("a", 2), ("b", 3)))
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "tiny-org/base", base, revision="v2")
    populate_hub_cache(cache, "tiny-org/a", a)
    recipe = ("merge_method: ties\nbase_model: tiny-org/base@v2\nparameters: {density: 0.5, weight: 0.5}\nmodels:\n"
              f"  - model: tiny-org/a\n  - model: {b}\n")
    cfg = tmp_path / "r.yaml"
    cfg.write_text(recipe)
    result = run_cli("merge", cfg, "--out", tmp_path / "my-merge",
                     env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.output

    card = ModelCard.load(tmp_path / "my-merge" / "README.md")
    assert card.data.base_model == ["tiny-org/base", "tiny-org/a"]  # hub ids only: the local model is not one
    assert card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers" and card.data.tags == ["merge", "mergehub"]
    text = card.text
    assert text.startswith("\n# my-merge") or text.startswith("# my-merge")
    assert "**ties** ([paper](https://arxiv.org/abs/2306.01708))" in text
    assert "Base model: `tiny-org/base@v2`" in text
    assert "- `tiny-org/a`" in text and f"- `{b}`" in text and "- `tiny-org/base@v2`" not in text
    assert "```yaml\n" + recipe.strip() + "\n```" in text
    assert (tmp_path / "my-merge" / "mergehub_config.yml").read_text() == recipe
