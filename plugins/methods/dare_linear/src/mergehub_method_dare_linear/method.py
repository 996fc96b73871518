"""DARE, linear: keep each task-vector entry with probability ``density`` (drawn from
``inputs.generator``), rescale to the original L1 norm, add the weighted sum to the base.

The maths is :func:`mergehub.taskarith.merge_task_vectors` with random dropping and no consensus.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import merge_task_vectors


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_task_vectors(inputs, sparsifier="random", consensus=None)
