"""Y = (mean norm) · (Karcher mean direction) of all the models, each with weight 1/N.

A base model is just another input. See :func:`mergehub.spherical.karcher_mean`.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.spherical import karcher_mean


def merge(inputs: MergeInputs) -> torch.Tensor:
    n = len(inputs.tensors)
    return karcher_mean(inputs.tensors, [1.0 / n] * n, inputs.shared["max_iter"], inputs.shared["tol"])
