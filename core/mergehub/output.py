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
from pathlib import Path

from mergehub import __version__
from mergehub.blocks import DEFAULT_MAX_MEMORY
from mergehub.card import write_card
from mergehub.errors import MergehubError
from mergehub.executor import Executor, Progress, weight_map
from mergehub.plan import Plan

TOKENIZER_FILES = [
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "added_tokens.json",
    "merges.txt", "vocab.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
    "video_preprocessor_config.json",
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
    """Recipe features that are validated but whose execution is not available (none at the moment)."""


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


def copy_tokenizer(plan: Plan, tmp: Path) -> None:
    """The output tokenizer, as mergekit writes it (§6.2).

    A built tokenizer (tokenizer_source / tokenizer:) is saved with save_pretrained. Otherwise the
    donor's files are copied as they are, generation_config.json included, unless a chat_template
    is set or the donor lacks tokenizer.json/tokenizer.model: then its tokenizer is loaded and saved
    again with transformers, with the template (and without generation_config.json).
    """
    from mergehub import tokenizer

    template = plan.chat_template
    if plan.vocab is not None:
        tokenizer.save_tokenizer(plan.vocab.tokenizer, tmp, template)
        return
    donor = plan.donor.directory
    complete = (donor / "tokenizer_config.json").is_file() and any((donor / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
    if (plan.recipe.chat_template is None and complete) or not tokenizer.reserialize(donor, tmp, template):
        for name in TOKENIZER_FILES:
            if (donor / name).is_file():
                shutil.copyfile(donor / name, tmp / name)
        if template is not None:  # the donor's tokenizer did not load: still write the template beside its files
            tokenizer.write_template(tmp, template)
