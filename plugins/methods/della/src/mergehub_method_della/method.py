"""DELLA-merging: drop entries at random with a keep probability that rises with magnitude rank
(density ± epsilon, drawn from ``inputs.generator``), rescale, elect signs and average the agreeing entries.

The maths is :func:`mergehub.taskarith.merge_task_vectors` with magnitude-ranked dropping and sum consensus.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import merge_task_vectors


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_task_vectors(inputs, sparsifier="della_magprune", consensus="sum")
