"""Model Breadcrumbs with TIES sign consensus: outlier trimming, then only the entries that
agree with the elected sign are added.

The maths is :class:`mergehub.maths.OutlierBlocks` with sum consensus; the same object merges
a tensor given whole or, when it is larger than ``--max-memory``, in row blocks.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import breadcrumbs_ties_blocks, merge_whole


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(breadcrumbs_ties_blocks(inputs), inputs)
