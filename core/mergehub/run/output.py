"""Turn a plan into a finished Hugging Face model directory, atomically and resumably.

Everything is written into a hidden partial directory beside the output (locked against a
second run), which is made durable and renamed into place only when complete; an interrupted
run never leaves a directory that looks like a finished model, and ``--force`` replaces an old
output only after the new one is complete. An interrupted run keeps its finished tensors and a
journal (:mod:`mergehub.run.journal`), so ``--resume`` carries on where it stopped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergehub.common.errors import MergehubError, RecipeError
from mergehub.common.version import __version__
from mergehub.plan.planner import Plan
from mergehub.run.card import write_card
from mergehub.run.job import ExecutorJob, Progress, layout_shards, weight_map
from mergehub.run.journal import Journal, MergeInterrupted, differences
from mergehub.run.lock import OWNER, DirectoryLock
from mergehub.run.options import RunOptions

TOKENIZER_FILES = [
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "added_tokens.json",
    "merges.txt", "vocab.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
    "video_preprocessor_config.json",
]
INDEX = "model.safetensors.index.json"
FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no room: the disk, a file-size limit, a quota


def check_output(out: Path, force: bool) -> None:
    """Refuse to touch an existing output unless --force (checked before any work)."""
    if out.exists() and not force:
        raise MergehubError(f"output directory {out} already exists",
                            hint="choose another --out, or pass --force to replace it once the new merge is complete")
    if out.exists() and not out.is_dir():
        raise MergehubError(f"output path {out} exists and is not a directory", hint="choose another --out")


def check_supported(plan: Plan) -> None:
    """Recipe features that are validated but whose execution is not available (none at the moment)."""


def partial_directory(out: Path) -> Path:
    """Where an unfinished output lives: hidden, beside ``out``, never mistaken for a model."""
    return out.parent / f".{out.name}.mergehub-partial"


def write_model(plan: Plan, out: Path, options: RunOptions, executor: Any, backend: Any, *, replace: bool,
                identity: dict[str, Any], progress: Progress | None = None,
                extra_files: dict[str, str] | None = None, files: Callable[[Path], None] | None = None,
                basename: str = "model") -> None:
    """Have ``executor`` merge into the partial directory, then rename it to ``out`` once everything is written.

    ``replace`` allows an existing ``out`` to be replaced. ``identity`` (see
    :func:`mergehub.run.journal.run_identity`) lets an interrupted run be resumed: with
    ``options.resume`` the tensors already written are kept; ``options.force`` discards an
    interrupted run's work instead of refusing to. On failure or interrupt the partial directory
    is kept when it holds finished tensors, and removed when it holds none. ``files`` writes what goes
    beside the weights (default: the plan's config.json, tokenizer and model card); ``basename`` names the
    weight files (``adapter_model`` for a PEFT adapter).
    """
    check_output(out, replace)
    check_supported(plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_directory(out)
    tmp.mkdir(exist_ok=True)
    with DirectoryLock(tmp, out):
        journal = _journal(tmp, out, identity, options.resume, options.force)
        try:
            shards = layout_shards(plan.tensors, options.shard_size, basename)
            executor.run(ExecutorJob(plan, tmp, shards, backend, journal, progress))
            _finish_directory(plan, tmp, out, shards, extra_files or {}, files, basename)
            journal.discard()
            (tmp / OWNER).unlink(missing_ok=True)
            _sync_directory(tmp)
            _move_into_place(tmp, out)
        except BaseException as exc:
            _after_failure(tmp, journal, len(plan.tensors), exc)
            raise


def _finish_directory(plan: Plan, tmp: Path, out: Path, shards: list, extra_files: dict[str, str],
                      files: Callable[[Path], None] | None, basename: str = "model") -> None:
    if len(shards) > 1:
        total = sum(t.nbytes for t in plan.tensors)
        index = {"metadata": {"total_size": total, "mergehub_version": __version__}, "weight_map": weight_map(shards)}
        (tmp / INDEX.replace("model", basename, 1)).write_text(json.dumps(index, indent=2) + "\n")
    if files is not None:
        files(tmp)
    else:
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
        copy_tokenizer(plan, tmp)
        write_card(plan, tmp, out.name)
    for name, text in extra_files.items():
        (tmp / name).write_text(text)


def _journal(tmp: Path, out: Path, identity: dict[str, Any], resume: bool, restart: bool) -> Journal:
    """The journal to write into: the interrupted run's (resume), or a new one."""
    old = Journal.load(tmp)
    if old is not None and old.saved and resume:
        reasons = differences(old.identity, identity)
        if reasons:
            raise MergehubError(f"cannot resume the interrupted merge into {out}: " + "; ".join(reasons),
                                hint="run the original recipe and options again with --resume, "
                                     "or pass --force (without --resume) to start over")
        return old
    if old is not None and old.saved and not restart:
        raise MergehubError(f"an interrupted merge into {out} is waiting ({old.saved} of "
                            f"{old.identity.get('tensors', '?')} tensors written, in {tmp})",
                            hint="run the same command with --resume to continue it, or with --force to start over")
    for child in tmp.iterdir():
        if child.name != OWNER:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    journal = Journal(tmp, identity)
    journal.save()
    return journal


def _after_failure(tmp: Path, journal: Journal, total: int, exc: BaseException) -> None:
    """Keep finished work for --resume (a partial directory without any is removed); say how to continue."""
    done = journal.saved
    if not done:
        shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(exc, KeyboardInterrupt):
        raise MergeInterrupted(f"interrupted: {done} of {total} tensors are saved in {tmp}; run the same command "
                               "with --resume to continue" if done else
                               "interrupted before any tensor was complete; nothing was written") from exc
    if isinstance(exc, OSError) and exc.errno in FULL:
        raise _disk_full(exc, tmp, done, total) from exc
    if done and isinstance(exc, MergehubError) and not isinstance(exc, RecipeError):  # NaN at 90 %: keep the 90 %
        kept = (f"{done} of {total} finished tensors are kept in {tmp}: after fixing this, --resume "
                "continues (same recipe and inputs), --force starts over")
        exc.hint = f"{exc.hint}; {kept}" if exc.hint else kept


def _disk_full(exc: OSError, tmp: Path, done: int, total: int) -> MergehubError:
    kept = f"; {done} of {total} tensors are kept in {tmp}" if done else ""
    return MergehubError(f"no space left for the output ({exc.strerror}: {exc.filename or tmp}){kept}",
                         hint="free disk space (mergehub plan shows how much the output needs), then run the same "
                              "command" + (" with --resume" if done else ""))


def _sync_directory(directory: Path) -> None:
    """Make the small files and the directory entries durable before the rename publishes them."""
    for path in directory.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors"):  # shards are fsync'd as they close
            with open(path, "rb") as file:
                os.fsync(file.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    from mergehub.models import tokenizer
    template = plan.chat_template
    if plan.vocab is not None:
        tokenizer.save_tokenizer(plan.vocab.tokenizer, tmp, template)
        return
    donor = plan.donor.directory
    complete = (donor / "tokenizer_config.json").is_file() and any((donor / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
    if (plan.recipe.chat_template is None and complete) or not tokenizer.reserialize(donor, tmp, template, plan.trust_remote_code):
        for name in TOKENIZER_FILES:
            if (donor / name).is_file():
                shutil.copyfile(donor / name, tmp / name)
        if template is not None:  # the donor's tokenizer did not load: still write the template beside its files
            tokenizer.write_template(tmp, template)
