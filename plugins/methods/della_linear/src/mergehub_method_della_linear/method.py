"""DELLA without sign consensus: magnitude-ranked random dropping, rescale, weighted sum.

The maths is :func:`mergehub.taskarith.merge_task_vectors` with magnitude-ranked dropping and no consensus.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import merge_task_vectors


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_task_vectors(inputs, sparsifier="della_magprune", consensus=None)
