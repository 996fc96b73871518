"""The public API for executor plugins: what an executor receives and the parts it runs the plan with.

An executor (see :func:`mergehub.plugin.hookspecs.mergehub_register_executors`) is built with the run's
:class:`RunOptions` and called with one :class:`ExecutorJob` per stage. It computes tensors with
:class:`TensorComputer` (the same maths, blocks and per-tensor seeds as the local executor, hence
the same bytes), writes shards with ``job.backend.writer``, records progress in ``job.journal``
and stops cleanly between tensors when :class:`StopRequest` says so. This module imports torch;
import it only from the code that runs a merge.
"""

from __future__ import annotations

from mergehub.models.loader import locate_in_hub_cache
from mergehub.plan.planner import OutputTensor, Plan
from mergehub.run.compute import TensorComputer
from mergehub.run.interrupt import StopRequest
from mergehub.run.job import ExecutorJob, Shard, finished_shards
from mergehub.run.options import RunOptions

__all__ = [
    "ExecutorJob",
    "OutputTensor",
    "Plan",
    "RunOptions",
    "Shard",
    "StopRequest",
    "TensorComputer",
    "finished_shards",
    "locate_in_hub_cache",
]
