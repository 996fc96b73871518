"""The ``ray`` executor's driver: one Ray task per output shard, recorded as each shard lands.

The plan is pure data, so it is put in Ray's object store once and every task rebuilds its
readers from it (see :mod:`mergehub_executor_ray.shard`). Shards finish in any order; each one
is recorded in the journal by name once its file is renamed into place, so ``--resume`` after a
dead driver keeps every finished shard, and a worker that dies mid-shard is retried by Ray
(``max_retries``) from nothing. Ctrl-C cancels the tasks still running and leaves the finished
shards for ``--resume``. The driver, as with the local executor, then writes the index, config,
tokenizer and card and renames the directory into place (the core does that after ``run``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mergehub import MergehubError
from mergehub.executing import (
    ExecutorJob,
    RunOptions,
    Shard,
    StopRequest,
    finished_shards,
)

from mergehub_executor_ray.shard import TEMPORARY, write_shard

#: How often (seconds) the driver looks for finished shards and worker progress.
POLL = 0.2


class RayExecutor:
    """Runs each stage's shards as Ray tasks; settings come from ``--ray-KEY VALUE`` (see options.schema.json)."""

    def __init__(self, options: RunOptions):
        self.options = options
        self.settings = dict(options.executor_options)

    def run(self, job: ExecutorJob) -> None:
        ray = _connect(self.settings.get("address"))
        finished = finished_shards(job)
        _remove_stale(job.directory)
        pending = [s for s in job.shards if s.file not in finished]
        progress = Reporter(job, _sink(ray) if pending else None)
        for shard in job.shards:
            if shard.file in finished:
                progress.shard_done(shard)
        if not pending:
            return
        for model in job.plan.models:  # workers run in other directories: relative paths would point elsewhere
            model.directory = model.directory.resolve()
            if model.adapter_directory is not None:
                model.adapter_directory = model.adapter_directory.resolve()
        refs = self.submit(ray, job, pending, progress.sink)
        try:
            with StopRequest() as stop:
                while refs:
                    done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=POLL)
                    progress.poll()
                    stop.check()
                    for ref in done:
                        shard = refs.pop(ref)
                        _check(_result(ray, ref), shard, job.directory)
                        job.journal.finish_shard(shard.file, len(shard.tensors))
                        progress.shard_done(shard)
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            _remove_stale(job.directory)  # left by workers that died mid-shard (their retries wrote the shard)

    def submit(self, ray: Any, job: ExecutorJob, shards: list[Shard], sink: Any) -> dict[Any, Shard]:
        """Start one task per shard; returns task reference → shard."""
        options = self.options
        settings = {"device": options.device, "seed": options.seed, "max_memory": options.max_memory,
                    "allow_nonfinite": options.allow_nonfinite, **self.settings}
        task = ray.remote(write_shard).options(num_cpus=float(settings.get("cpus_per_task", 1)),
                                               max_retries=int(settings.get("max_retries", 3)),
                                               memory=options.max_memory, retry_exceptions=False)
        plan = ray.put(job.plan)
        return {task.remote(plan, str(job.directory.resolve()), shard, job.backend, settings, sink): shard for shard in shards}


class Reporter:
    """Feeds the run's progress bar from the tensor names the workers report, each name once."""

    def __init__(self, job: ExecutorJob, sink: Any):
        self.job, self.sink = job, sink
        self.by_name = {t.name: t for t in job.plan.tensors}
        self.seen: set[str] = set()

    def poll(self) -> None:
        if self.sink is not None:
            import ray

            self.report(ray.get(self.sink.drain.remote()))

    def shard_done(self, shard: Shard) -> None:
        self.report([t.name for t in shard.tensors])

    def report(self, names: list[str]) -> None:
        for name in names:
            if name not in self.seen and self.job.progress is not None:
                self.job.progress(self.by_name[name])
            self.seen.add(name)


def _connect(address: str | None) -> Any:
    """Join (or, without an address, start) the Ray cluster once per process."""
    try:
        import ray
    except ImportError as exc:
        raise MergehubError("the ray executor needs Ray", hint="pip install 'ray>=2.9'") from exc
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MergehubError(f"cannot connect to the Ray cluster at {address or '(a new local one)'}: {exc}",
                                hint="start it with `ray start --head` (and `ray start --address HEAD:6379` on each "
                                     "worker node), then pass --ray-address auto or ray://HEAD:10001") from exc
    return ray


def _sink(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class ProgressSink:
        """Collects the names of the tensors workers finished, until the driver drains them."""

        def __init__(self) -> None:
            self.names: list[str] = []

        def add(self, name: str) -> None:
            self.names.append(name)

        def drain(self) -> list[str]:
            names, self.names = self.names, []
            return names

    return ProgressSink.remote()


def _result(ray: Any, ref: Any) -> dict[str, Any]:
    """A task's summary; a mergehub error raised on a worker is raised here as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MergehubError):
            raise cause from None
        if isinstance(cause, OSError):
            raise MergehubError(f"a Ray worker could not read or write: {cause}",
                                hint="inputs and --out must be on storage every node mounts at the same path") from None
        raise


def _check(summary: dict[str, Any], shard: Shard, directory: Path) -> None:
    """The shard a task says it wrote is the one it was given, and it is there."""
    names = [t.name for t in shard.tensors]
    if summary.get("file") != shard.file or summary.get("tensors") != names:
        raise MergehubError(f"a Ray task returned the wrong shard ({summary.get('file')} for {shard.file})",
                            hint="this is a bug in mergehub-executor-ray")
    if not (directory / shard.file).is_file():
        raise MergehubError(f"shard {shard.file} is not in {directory} although a worker wrote it",
                            hint="--out must be on storage every node mounts at the same path")


def _remove_stale(directory: Path) -> None:
    """Temporary files of shards whose tasks died (they are started again from nothing)."""
    for path in directory.glob(f".*{TEMPORARY}*"):
        path.unlink(missing_ok=True)
