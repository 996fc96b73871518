"""NearSwap: w = clamp(t / max(|B − X|, 1e-6), 0, 1);  Y = w·X + (1 − w)·B, element by element.

Each entry moves from the base towards the other model by at most ``t``, so entries
already within ``t`` of the base take the other model's value. Computed in the
inputs' dtype with mergekit's exact expression, so the bytes match. torch evaluates
``t / d`` as ``t · (1/d)``; in float16, 1/d overflows for d < 2⁻¹⁶, which would make
t = 0 give 0·∞ = NaN there, so t = 0 returns the base directly.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import split_base


def merge(inputs: MergeInputs) -> torch.Tensor:
    base, (other,), _ = split_base(inputs)
    t = inputs.shared["t"]
    if t == 0:
        return base.clone()
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base
