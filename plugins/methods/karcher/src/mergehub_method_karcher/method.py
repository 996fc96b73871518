"""Y = (mean norm) · (Karcher mean direction) of all the models, each with weight 1/N.

A base model is just another input. The iteration runs on the inputs' Gram matrix, summed
over row blocks first (:func:`mergehub.maths.karcher_solve`); one more pass forms the direction,
rounds it to the inputs' dtype and scales it there (:class:`mergehub.maths.KarcherBlocks`).
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import karcher_blocks, merge_whole


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_whole(karcher_blocks(inputs), inputs)
