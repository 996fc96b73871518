"""Model Breadcrumbs with TIES sign consensus: outlier trimming, then only the entries that
agree with the elected sign are added.

The maths is :func:`mergehub.taskarith.merge_task_vectors` with outlier trimming and sum consensus.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import merge_task_vectors


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_task_vectors(inputs, sparsifier="magnitude_outliers", consensus="sum")
