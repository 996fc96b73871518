"""The output's model card (README.md with Hub front matter) and the recipe saved beside it.

The front matter is what the Hugging Face Hub reads to link a merge to its parents:
``base_model`` holds repository ids only (local paths and stage outputs are not ids, and a
revision is not part of an id; the card's body names revisions), and ``base_model_relation:
merge`` tells the Hub what kind of child this is.
"""

from __future__ import annotations

from pathlib import Path

from mergehub.common.version import __version__
from mergehub.plan.planner import Plan
from mergehub.recipe.config import ModelRef

RECIPE_FILE = "mergehub_config.yml"


def hub_ids(refs: list[ModelRef]) -> list[str]:
    """Hub repository ids among the references (base models and LoRA adapters), first seen first."""
    ids: list[str] = []
    for ref in refs:
        for path in (ref.path, ref.lora):
            if path and not Path(path).expanduser().exists() and path not in ids:
                ids.append(path)
    return ids


def front_matter(plan: Plan) -> list[str]:
    base = plan.recipe.base_model
    refs = ([base] if base else []) + [m.ref for m in plan.models]
    lines = ["---", "library_name: transformers", "tags:", "- merge", "- mergehub"]
    ids = hub_ids(refs)
    if ids:
        lines += ["base_model:"] + [f"- {i}" for i in ids] + ["base_model_relation: merge"]
    return lines + ["---"]


def card_text(plan: Plan, title: str) -> str:
    recipe = plan.recipe
    method = recipe.method
    paper = f" ([paper]({method.paper}))" if method.paper else ""
    base = recipe.base_model if method.base != "ignored" else None
    lines = [*front_matter(plan), f"# {title or 'merged model'}", "",
             f"This model was merged with [mergehub](https://github.com/mergehub/mergehub) {__version__}.", "",
             "## Method", "", f"**{method.name}**{paper}: {method.summary}", ""]
    if base:
        lines += [f"Base model: `{base}`", ""]
    lines += ["## Models", ""] + [f"- `{m.ref}`" for m in plan.models if m.ref != base]
    lines += ["", "## Recipe", "", f"The recipe, also saved as `{RECIPE_FILE}`:", "", "```yaml",
              recipe.document.text.strip(), "```", ""]
    return "\n".join(lines)


def write_card(plan: Plan, directory: Path, title: str) -> None:
    """README.md, and the recipe's own text as mergehub_config.yml."""
    (directory / "README.md").write_text(card_text(plan, title))
    (directory / RECIPE_FILE).write_text(plan.recipe.document.text)
