"""TIES-merging: keep the largest ``density`` of each task vector, elect a sign per entry by
summed value, and average (weighted) the entries that agree with it.

The maths is :func:`mergehub.taskarith.merge_task_vectors` with magnitude trimming and sum consensus.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import merge_task_vectors


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_task_vectors(inputs, sparsifier="magnitude", consensus="sum")
