"""Model Breadcrumbs: drop the ``gamma`` largest and the smallest entries of each task vector,
keeping ``density`` of them, and add the weighted sum to the base.

The maths is :func:`mergehub.taskarith.merge_task_vectors` with outlier trimming and no consensus.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import merge_task_vectors


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_task_vectors(inputs, sparsifier="magnitude_outliers", consensus=None)
