"""Multi-stage ("mega") recipes: several YAML documents, later ones using earlier results by name.

A document's ``name`` makes its result usable as a model by later documents; at most one
document may be unnamed: the final merge, written to ``--out``. Named results go to the
intermediate directory. Stages run in dependency order (not file order), and every
stage is validated and planned — against the planned shapes of the stages it depends
on — before the first one runs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergehub.common.errors import MergehubError, Problem, RecipeError, did_you_mean
from mergehub.models.loader import ModelInfo
from mergehub.plan.planner import Plan, checked_recipe, make_plan
from mergehub.plugin.registry import Registry
from mergehub.plugin.specs import TensorHeader
from mergehub.recipe.config import ModelRef, Recipe, model_refs
from mergehub.recipe.yamlsource import Document, PathKey, format_path


@dataclass
class Stage:
    name: str | None  # None: the unnamed final merge
    document: Document
    output: Path
    deps: list[str] = field(default_factory=list)
    recipe: Recipe | None = None
    plan: Plan | None = None

    @property
    def label(self) -> str:
        return self.name or "(final)"


class PlannedReader:
    """Headers of a stage output that does not exist yet, taken from its plan."""

    def __init__(self, plan: Plan):
        self.plan = plan  # what the stage will write, its tokenizer included
        self.headers = {t.name: TensorHeader(t.out_dtype, t.shape) for t in plan.tensors}

    def tensor_names(self) -> list[str]:
        return list(self.headers)

    def header(self, name: str) -> TensorHeader:
        return self.headers[name]

    def read(self, name: str) -> Any:
        raise MergehubError(f"stage output {name} is read before it was written")  # a bug if it ever happens

    def close(self) -> None:
        pass


#: A stage's output is ``<intermediate dir>/<name>``: a name is one plain, visible path component, so no
#: recipe can make mergehub write outside --out and the intermediate directory (no '/', '\\', '..',
#: '~', NUL or drive letters; not hidden; short enough for any file system).
STAGE_NAME = re.compile(r"\w[\w.\-]{0,99}")


def _stage_problem(document: Document, path: PathKey, message: str, hint: str | None = None) -> Problem:
    return Problem(message, format_path(path), document.line_of(path), hint)


def split_stages(documents: list[Document], out: Path, intermediate: Path) -> list[Stage]:
    """Name the stages, rewrite references to them, and order them by dependency.

    A single document is one stage written to ``out``, whatever its ``name``.
    """
    if len(documents) == 1:
        return [Stage(None, documents[0], out)]
    problems: list[Problem] = []
    stages: list[Stage] = []
    for doc in documents:
        name = doc.data.get("name") if isinstance(doc.data, dict) else None
        if name is not None and (not isinstance(name, str) or not STAGE_NAME.fullmatch(name)):
            shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
            problems.append(_stage_problem(doc, ("name",), f"stage name {shown} is not a plain name; it names the "
                                           "stage's directory inside the intermediate directory",
                                           "use up to 100 letters, digits, '-', '_' or '.', not starting with '.' "
                                           "or '-' (no '/', '\\', '~' or spaces)"))
            name = None
        stages.append(Stage(name, doc, intermediate / name if name else out))
    _check_names(stages, problems)
    by_name = {s.name: s for s in stages if s.name}
    for stage in stages:
        _rewrite_references(stage, by_name, problems)
    if problems:
        raise RecipeError(problems, documents[0].file)
    return _order(stages)


def _check_names(stages: list[Stage], problems: list[Problem]) -> None:
    seen: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in seen:
            first = seen[stage.name]
            problems.append(_stage_problem(stage.document, ("name",),
                            f"two stages are named '{stage.name}' (documents {first.document.number} and "
                            f"{stage.document.number})", "give every stage its own name"))
        elif stage.name:
            seen[stage.name] = stage
    unnamed = [s for s in stages if s.name is None and _written_name(s.document) is None]  # bad names: reported
    if len(unnamed) > 1:
        numbers = ", ".join(str(s.document.number) for s in unnamed)
        problems.append(_stage_problem(unnamed[1].document, (), f"documents {numbers} have no name; only one "
                        "stage (the final merge) may be unnamed", "add name: <stage name> to all but the final stage"))


def _written_name(document: Document) -> Any:
    return document.data.get("name") if isinstance(document.data, dict) else None


def _rewrite_references(stage: Stage, by_name: dict[str, Stage], problems: list[Problem]) -> None:
    data = stage.document.data
    if not isinstance(data, dict):
        return
    for path, value in model_refs(data):
        try:
            ref = ModelRef.parse(value)
        except (ValueError, KeyError, TypeError):
            continue  # the recipe validation reports it
        if ref.path in by_name:
            target = by_name[ref.path]
            if target is stage:
                problems.append(_stage_problem(stage.document, path, f"stage '{stage.name}' uses itself as a model"))
                continue
            _set(data, path, _with_path(value, str(target.output)))
            if ref.path not in stage.deps:
                stage.deps.append(ref.path)
        elif "/" not in ref.path and not Path(ref.path).expanduser().exists():
            suggestion = did_you_mean(ref.path, by_name)
            problems.append(_stage_problem(
                stage.document, path,
                f"'{ref.path}' is neither a stage of this recipe nor a model directory" + (f" ({suggestion})" if suggestion else ""),
                "stages: " + (", ".join(sorted(by_name)) or "none") + "; name a stage, a local directory or a Hub id org/name"))


def _with_path(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        value = copy.deepcopy(value)
        model = value["model"]
        value["model"] = {**model, "path": path} if isinstance(model, dict) else _with_path(model, path)
        return value
    ref = ModelRef.parse(value)
    return str(ModelRef(path, None, ref.lora, lora_revision=ref.lora_revision))


def _set(data: Any, path: PathKey, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _order(stages: list[Stage]) -> list[Stage]:
    """Dependencies first; file order among independent stages; a cycle is an error."""
    by_name = {s.name: s for s in stages if s.name}
    ordered: list[Stage] = []
    state: dict[int, str] = {}

    def visit(stage: Stage, trail: list[str]) -> None:
        if state.get(id(stage)) == "done":
            return
        if state.get(id(stage)) == "active":
            cycle = trail[trail.index(stage.label):] + [stage.label]
            raise MergehubError(f"the stages depend on each other in a cycle: {' → '.join(cycle)}",
                                location=stage.document.file,
                                hint="a stage can only use stages that do not (directly or not) use it")
        state[id(stage)] = "active"
        for dep in stage.deps:
            visit(by_name[dep], trail + [stage.label])
        state[id(stage)] = "done"
        ordered.append(stage)

    for stage in stages:
        visit(stage, [])
    return ordered


def plan_stages(stages: list[Stage], registry: Registry, allow_crimes: bool = False,
                trust_remote_code: bool = False) -> None:
    """Validate and plan every stage before any runs; all problems of all stages in one error.

    A recipe of one stage is planned as such: its problems are not labelled with a stage, and its
    plan stays open for the run.
    """
    if len(stages) == 1:
        stages[0].recipe = checked_recipe(stages[0].document, registry)
        stages[0].plan = make_plan(stages[0].recipe, registry, allow_crimes, trust_remote_code=trust_remote_code)
        return
    problems: list[Problem] = []
    planned: dict[str, ModelInfo] = {}
    failed: set[str] = set()
    file = stages[0].document.file
    for stage in stages:
        try:
            stage.recipe = checked_recipe(stage.document, registry, planned=[str(s.output) for s in stages])
            if failed & set(stage.deps):
                failed.add(stage.label)
                continue  # its inputs could not be planned; their problems are reported
            stage.plan = make_plan(stage.recipe, registry, allow_crimes, planned, trust_remote_code)
        except RecipeError as exc:
            problems += [_labelled(p, stage) for p in exc.problems]
            failed.add(stage.label)
            continue
        except MergehubError as exc:
            problems.append(Problem(f"stage {stage.label}: {exc.message}", "", stage.document.line_of(()), exc.hint))
            failed.add(stage.label)
            continue
        stage.plan.close()
        ref = ModelRef(str(stage.output))
        planned[str(stage.output)] = ModelInfo(ref, stage.output, stage.plan.config, registry, PlannedReader(stage.plan), planned=True)
    if problems:
        raise RecipeError(problems, file)


def _labelled(problem: Problem, stage: Stage) -> Problem:
    return Problem(f"stage {stage.label}: {problem.message}", problem.path, problem.line, problem.hint)


def stage_warnings(stages: list[Stage]) -> list[str]:
    """The recipes' and plans' warnings, each labelled with its stage when there are several."""
    found = []
    for stage in stages:
        prefix = "" if len(stages) == 1 else f"stage {stage.label}: "
        found += [f"{prefix}{p.where(stage.document.file)}: {p.message}" for p in (stage.recipe.warnings if stage.recipe else [])]
        found += [f"{prefix}{message}" for message in (stage.plan.warnings if stage.plan else [])]
    return found

