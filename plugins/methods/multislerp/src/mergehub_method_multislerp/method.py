"""Weighted spherical (barycentric) interpolation of the models, of their task vectors with a base.

The coefficients come from the Gram matrix of the inputs (:func:`mergehub.maths.multislerp_solve`),
summed in float64; the output is formed in float32 and rounded once to the inputs' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from mergehub import MergeInputs
from mergehub.maths import merge_whole, multislerp_blocks


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_whole(multislerp_blocks(inputs), inputs)


def check(params: list[dict[str, Any]], shared: dict[str, Any]) -> str | None:
    """Weights that sum to zero cannot be normalised (the merge would be all NaN)."""
    weights = [p["weight"] for p in params if "weight" in p]
    if shared.get("normalize_weights", True) and len(weights) > 1 and sum(weights) == 0:
        return (f"the weights {weights} sum to 0, so normalize_weights cannot divide by their sum; "
                "change the weights or set normalize_weights: false")
    return None
