"""A ``mergehub moe`` recipe (mergekit-moe's format, unchanged): text to a validated :class:`MoERecipe`.

Problems are collected, not raised one by one: the JSON Schema's (with file:line and did-you-mean),
then mergekit-moe's own refusals, so a user sees everything wrong in one go before any model is read.
mergehub asks for prompts only where a gate needs them (``hidden``, ``cheap_embed``); mergekit also
asks for them with ``uniform_random``, whose gates ignore them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from mergehub.common.errors import Problem, RecipeError
from mergehub.recipe.chattemplate import template_problem
from mergehub.recipe.config import ModelRef, normalize_dtype
from mergehub.recipe.validate import schema_problems
from mergehub.recipe.yamlsource import Document, PathKey, format_path

#: Gate modes whose router vectors come from the experts' prompts.
PROMPTED = ("hidden", "cheap_embed")


@cache
def moe_schema() -> dict[str, Any]:
    return json.loads(resources.files("mergehub.recipe").joinpath("moe.schema.json").read_text("utf-8"))


@dataclass(frozen=True)
class Expert:
    model: ModelRef
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass(frozen=True)
class MoERecipe:
    base: ModelRef
    experts: tuple[Expert, ...]
    shared: tuple[Expert, ...]
    gate_mode: str
    experts_per_token: int
    dtype: str | None
    architecture: str | None
    chat_template: str | None
    document: Document

    def models(self) -> list[ModelRef]:
        """Every distinct model the recipe reads, base first."""
        refs = [self.base, *(e.model for e in self.experts + self.shared)]
        return list(dict.fromkeys(refs))


def load_moe_recipe(document: Document, allow_identical: bool = False) -> MoERecipe:
    """The recipe in ``document``, or a :class:`RecipeError` listing every problem in it."""
    problems = schema_problems(document, moe_schema())
    if not problems:
        problems = refusals(document, allow_identical)
    if problems:
        raise RecipeError(problems, document.file)
    data = document.data
    experts = tuple(_expert(e) for e in data["experts"])
    return MoERecipe(base=ModelRef.parse(data["base_model"]), experts=experts,
                     shared=tuple(_expert(e) for e in data.get("shared_experts") or []),
                     gate_mode=data.get("gate_mode") or "hidden", experts_per_token=int(data.get("experts_per_token", 2)),
                     dtype=normalize_dtype(data.get("dtype")), architecture=data.get("architecture"),
                     chat_template=None if data.get("chat_template") == "auto" else data.get("chat_template"),
                     document=document)


def refusals(document: Document, allow_identical: bool) -> list[Problem]:
    """mergekit-moe's refusals, located: an MoE that cannot route, or routes nothing apart."""
    data = document.data
    experts = data["experts"]
    mode = data.get("gate_mode") or "hidden"
    found: list[Problem] = []

    def problem(path: PathKey, message: str, hint: str) -> None:
        found.append(Problem(message=message, path=format_path(path), line=document.line_of(path), hint=hint))

    per_token = data.get("experts_per_token", 2)
    if len(experts) < per_token:
        problem(("experts_per_token",), f"experts_per_token is {per_token} but there are only {len(experts)} experts",
                "list at least as many experts as experts_per_token, or lower experts_per_token")
    prompted = mode in PROMPTED
    for i, expert in enumerate(experts):
        if prompted and not expert.get("positive_prompts"):
            problem(("experts", i), f"expert {i} has no positive_prompts, which gate_mode '{mode}' routes by",
                    "give each expert one or more prompts that should go to it, or use gate_mode: random")
    shared = data.get("shared_experts") or []
    with_prompts = [bool(e.get("positive_prompts")) for e in shared]
    if any(with_prompts) and not all(with_prompts):
        problem(("shared_experts",), "some shared experts have positive_prompts and some do not",
                "give prompts to every shared expert or to none")
    if prompted and len(experts) > 1 and all(e.get("positive_prompts") for e in experts):
        first = _prompts(experts[0])
        if all(_prompts(e) == first for e in experts[1:]):
            problem(("experts",), "every expert has the same positive and negative prompts: the gates could not tell "
                    "them apart", "give each expert prompts that reflect what should be routed to it")
    if not allow_identical and len(experts) > 1:
        first_model = ModelRef.parse(experts[0]["source_model"])
        if all(ModelRef.parse(e["source_model"]) == first_model for e in experts[1:]):
            problem(("experts",), "every expert is the same model: the MoE would compute what that model computes, "
                    "at a higher cost", "use different fine-tunes, or pass --allow-identical-experts if you will "
                    "train the result")
    template = data.get("chat_template")
    message = template_problem(template) if isinstance(template, str) else None
    if message:
        problem(("chat_template",), message, "use a built-in template name or a Jinja template")
    return found


def _prompts(expert: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(expert.get("positive_prompts") or ()), tuple(expert.get("negative_prompts") or ())


def _expert(data: dict) -> Expert:
    return Expert(ModelRef.parse(data["source_model"]), tuple(data.get("positive_prompts") or ()),
                  tuple(data.get("negative_prompts") or ()), data.get("noise_scale"), data.get("residual_scale"))
