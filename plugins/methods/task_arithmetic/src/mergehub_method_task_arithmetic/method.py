"""Task arithmetic: Y = B + λ·Σ wᵢ·(Xᵢ − B), divided by Σ wᵢ when ``normalize``.

Computed in the inputs' dtype, as mergekit does; the maths is :func:`mergehub.maths.merge_task_vectors`.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import merge_task_vectors


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_task_vectors(inputs)
