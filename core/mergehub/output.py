"""Turn a plan into a finished Hugging Face model directory, atomically.

Everything is written into a hidden temporary directory beside the output, which is
renamed into place only when complete; an interrupted run never leaves a directory
that looks like a finished model, and ``--force`` replaces an old output only after
the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from mergehub import __version__
from mergehub.blocks import DEFAULT_MAX_MEMORY
from mergehub.errors import MergehubError
from mergehub.executor import Executor, Progress, weight_map
from mergehub.models import ModelInfo
from mergehub.plan import Plan

TOKENIZER_FILES = [
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "added_tokens.json",
    "merges.txt", "vocab.json", "chat_template.jinja", "chat_template.json",
]
INDEX = "model.safetensors.index.json"


def check_output(out: Path, force: bool) -> None:
    """Refuse to touch an existing output unless --force (checked before any work)."""
    if out.exists() and not force:
        raise MergehubError(f"output directory {out} already exists",
                            hint="choose another --out, or pass --force to replace it once the new merge is complete")
    if out.exists() and not out.is_dir():
        raise MergehubError(f"output path {out} exists and is not a directory", hint="choose another --out")


def check_supported(plan: Plan) -> None:
    """Recipe features that are validated but whose execution is not available yet."""
    recipe = plan.recipe
    if recipe.tokenizer_source == "union" or "tokenizer" in recipe.document.data:
        raise MergehubError("building a union tokenizer is not supported yet",
                            hint="use tokenizer_source: base, or name the model whose tokenizer to copy")
    template = recipe.chat_template
    if template and template != "auto" and "{" not in template:
        raise MergehubError(f"chat_template '{template}' is neither 'auto' nor a Jinja template",
                            hint="paste the template text (it contains '{{'), or use auto")


def write_model(plan: Plan, out: Path, backend: object, *, force: bool, shard_size: int, seed: int | None,
                device: str, progress: Progress | None = None, extra_files: dict[str, str] | None = None,
                max_memory: int = DEFAULT_MAX_MEMORY) -> None:
    check_output(out, force)
    check_supported(plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.mergehub-partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shards = Executor(plan, device=device, seed=seed, max_memory=max_memory).write(tmp, backend, shard_size, progress)
        if len(shards) > 1:
            total = sum(t.nbytes for t in plan.tensors)
            index = {"metadata": {"total_size": total, "mergehub_version": __version__}, "weight_map": weight_map(shards)}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
        copy_tokenizer(plan, tmp)
        write_card(plan, tmp, out.name)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.mergehub-old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def tokenizer_donor(plan: Plan) -> ModelInfo:
    source = plan.recipe.tokenizer_source
    if source not in (None, "base", "union"):
        return next(m for m in plan.models if m.ref == source)
    return plan.donor


def copy_tokenizer(plan: Plan, tmp: Path) -> None:
    donor = tokenizer_donor(plan)
    for name in TOKENIZER_FILES + ["generation_config.json"]:
        if (donor.directory / name).is_file():
            shutil.copyfile(donor.directory / name, tmp / name)
    template = plan.recipe.chat_template
    if template == "auto":
        template = _most_common_template(plan.models)
    if template:
        (tmp / "chat_template.jinja").write_text(template)
        config_path = tmp / "tokenizer_config.json"
        if config_path.is_file():  # the .jinja file must win over an embedded template
            config = json.loads(config_path.read_text())
            if config.pop("chat_template", None) is not None:
                config_path.write_text(json.dumps(config, indent=2) + "\n")


def _most_common_template(models: list[ModelInfo]) -> str | None:
    templates = [t for t in (_template_of(m.directory) for m in models) if t]
    return Counter(templates).most_common(1)[0][0] if templates else None


def _template_of(directory: Path) -> str | None:
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text()
    config = directory / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("chat_template")
        if isinstance(value, list):  # named templates: use the default one
            value = next((t.get("template") for t in value if t.get("name") == "default"), None)
        return value if isinstance(value, str) else None
    return None


def write_card(plan: Plan, tmp: Path, title: str) -> None:
    """README.md (model card) and the recipe itself as mergehub_config.yml."""
    recipe = plan.recipe
    method = recipe.method
    hub_ids = [str(m.ref) for m in plan.models if not Path(m.ref.path).exists()]
    front = ["---", "library_name: transformers", "tags:", "- merge", "- mergehub"]
    if hub_ids:
        front += ["base_model:"] + [f"- {ref}" for ref in hub_ids]
    front.append("---")
    base = recipe.base_model if method.base != "ignored" else None
    lines = [*front, f"# {title or 'merged model'}", "",
             f"This model was merged with [mergehub](https://github.com/mergehub/mergehub) {__version__}.", "",
             "## Method", "", f"**{method.name}**: {method.summary}" + (f" ([paper]({method.paper}))" if method.paper else ""), ""]
    if base:
        lines += [f"Base model: `{base}`", ""]
    lines += ["## Models", ""] + [f"- `{m.ref}`" for m in plan.models if m.ref != base] + ["", "## Recipe", "", "```yaml",
              recipe.document.text.strip(), "```", ""]
    (tmp / "README.md").write_text("\n".join(lines))
    (tmp / "mergehub_config.yml").write_text(recipe.document.text)
