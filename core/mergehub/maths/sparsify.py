"""What the random sparsifiers share outside their block mergers: the dtype masks are drawn in,
and DELLA's parameter check (a plan-time recipe error).

The sparsifiers themselves merge in blocks: magnitude top-k in :mod:`mergehub.maths.taskarith`
(with :mod:`mergehub.maths.topk`), breadcrumbs' rank window in :mod:`mergehub.maths.outliers`, DARE and
DELLA in :mod:`mergehub.maths.dropout`.
"""

from __future__ import annotations

import torch


def sampling_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype random masks are drawn and applied in: float32 for float16 on CPU, else the tensor's own."""
    return torch.float32 if tensor.dtype == torch.float16 and tensor.device.type == "cpu" else tensor.dtype


def check_della(density: float, epsilon: float) -> str | None:
    """Why (density, epsilon) cannot work, or None."""
    problem = _della_range_problem(density, epsilon)
    return f"density ± epsilon must lie strictly between 0 and 1, but {problem}" if problem else None


def check_della_params(params: list[dict], shared: dict) -> str | None:
    """The x-mergehub ``check`` of the DELLA methods: :func:`check_della` over every model's resolved parameters.

    Every distinct bad combination is named in the one sentence, not just the first.
    """
    found = [_della_range_problem(p["density"], p["epsilon"]) for p in params if "density" in p and "epsilon" in p]
    problems = list(dict.fromkeys(f for f in found if f))
    return f"density ± epsilon must lie strictly between 0 and 1, but {'; '.join(problems)}" if problems else None


def _della_range_problem(density: float, epsilon: float) -> str | None:
    if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
        return (f"density {density} with epsilon {epsilon} gives [{density - epsilon:g}, {density + epsilon:g}] "
                f"(with this density, use an epsilon below {min(density, 1 - density):g})")
    return None
