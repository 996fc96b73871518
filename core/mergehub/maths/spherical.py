"""Spherical maths shared by the slerp, nuslerp, multislerp and karcher methods.

Each method's output is a linear combination of its input vectors (the inputs, or their
task vectors when there is a base), and every quantity the reference computes on the way —
norms, cosines, the weighted mean direction, multislerp's tangent, karcher's iterate and
gradient — is a combination of them too. So every method here is a *solver*: it turns the
float64 Gram matrix of the inputs (see :mod:`mergehub.maths.gram`) into the coefficients of the
output, following the reference's formulas, thresholds and special cases (mergekit 0.1.5,
reference §3.2–3.5), and :class:`mergehub.maths.gram.GramBlocks` applies them block by block in
float32 (float64 for float64 inputs). Where the reference rounds its intermediate results to the
inputs' 16-bit dtype (nuslerp, multislerp), mergehub does not: its result is within one unit in
the last place of the formula computed in float64, and closer to it than the reference's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergehub.common.errors import MergehubError
from mergehub.maths.gram import GramBlocks, Select, Solve, length, norms, rounded
from mergehub.plugin.specs import MergeInputs


def split_optional_base(inputs: MergeInputs) -> tuple[torch.Tensor | None, list[torch.Tensor], list[dict]]:
    """The base tensor (or None), then the other tensors and their parameters, in recipe order."""
    others = non_base(inputs)
    base = inputs.tensors[inputs.base] if inputs.base is not None else None
    return base, [inputs.tensors[i] for i in others], [inputs.params[i] for i in others]


def non_base(inputs: MergeInputs) -> list[int]:
    """The indices of the inputs other than the base, in recipe order."""
    return [i for i in range(len(inputs.tensors)) if i != inputs.base]


def arc(t: float, cos: torch.Tensor, lerp: torch.Tensor) -> torch.Tensor:
    """(sin((1−t)θ)/sin θ, sin(tθ)/sin θ) with θ = acos(cos), stacked on the last dim; (1−t, t) where ``lerp``."""
    theta = torch.acos(torch.where(lerp, 0, cos))  # θ = π/2 where lerped: nothing divides by zero
    sin_theta = torch.sin(theta)
    c0 = torch.where(lerp, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    c1 = torch.where(lerp, t, torch.sin(t * theta) / sin_theta)
    return torch.stack([c0, c1], dim=-1)


def slerp_solve(t: float, dot_threshold: float = 0.9995, floor: float = 1e-8) -> Solve:
    """slerp's coefficients of (v0, v1): the arc, or the lerp when |cos θ| > ``dot_threshold``.

    A norm ≤ ``floor`` counts as 1 (that vector is not normalised), as in the reference.
    """
    def solve(gram: torch.Tensor) -> torch.Tensor:
        n = norms(gram)
        n = torch.where(n > floor, n, 1)
        cos = (gram[:, 0, 1] / (n[:, 0] * n[:, 1])).clamp(-1, 1)
        return arc(t, cos, cos.abs() > dot_threshold)
    return solve


def nuslerp_t(w1: float, w2: float) -> float:
    """The interpolation factor of two weights: w2 / (w1 + w2), or ½ when the sum is ~0."""
    total = w1 + w2
    return 0.5 if abs(total) < 1e-6 else w2 / total


def nuslerp_solve(t: float) -> Solve:
    """nuslerp's coefficients of (v0, v1), one pair per Gram matrix: the arc between the vectors as they are
    (sin((1−t)θ)/sin θ, sin(tθ)/sin θ), or (1−t, t) where they are parallel (1 − cos²θ ≤ 10⁻¹⁶).

    θ is the angle of the normalised vectors, a norm below 10⁻⁷ counting as 10⁻⁷, as in the reference.
    """
    def solve(gram: torch.Tensor) -> torch.Tensor:
        n = norms(gram).clamp(min=1e-7)
        cos = (gram[:, 0, 1] / (n[:, 0] * n[:, 1])).clamp(-1, 1)
        return arc(t, cos, (1 - cos.square()) <= 1e-8**2)
    return solve


def multislerp_solve(weights: Sequence[float], normalize_weights: bool, eps: float, name: str = "") -> Solve:
    """multislerp's coefficients: the weighted mean direction m̂ of the unit vectors uᵢ = vᵢ/(‖vᵢ‖ + eps),
    moved along the tangent τ = Σ wᵢ(uᵢ − (uᵢ·m̂)m̂) by ‖τ‖, then scaled by Σ wᵢ‖vᵢ‖ (reference §3.4).

    Every vector on the way is a combination of the vᵢ, so its coefficients and lengths follow from
    the Gram matrix. Two inputs whose mean direction vanishes (antipodal, cancelling weights) give
    their weighted sum; more are an error, as in the reference.
    """
    w = torch.tensor(list(weights), dtype=torch.float64)
    w = w / w.sum() if normalize_weights else w

    def solve(gram: torch.Tensor) -> torch.Tensor:
        g = gram[0]
        n = norms(g)
        scale = n + eps
        mean = w / scale  # m = Σ wᵢuᵢ
        mean_norm = length(g, mean)
        if mean_norm < eps:
            if len(w) != 2:
                raise MergehubError(
                    f"multislerp cannot merge {name or 'a tensor'}: the weighted mean of the input directions is "
                    "zero", hint="this happens when opposite (antipodal) inputs have weights that cancel; "
                    "change the weights")
            return w.unsqueeze(0)
        unit_mean = mean / mean_norm
        dots = (g @ unit_mean) / scale  # uᵢ·m̂
        tangent = mean - float(w @ dots) * unit_mean
        r = length(g, tangent) + eps
        return ((unit_mean * math.cos(r) + tangent * (math.sin(r) / r)) * float(w @ n)).unsqueeze(0)
    return solve


def karcher_solve(max_iter: int = 10, tol: float = 1e-5) -> Solve:
    """The Karcher mean direction of the inputs (equal weights), times their mean norm.

    Inputs with norm ≤ ``tol`` do not steer the direction but count in the norm; a zero input
    has no direction. Riemannian gradient steps until the step is shorter than ``tol``.
    """
    def solve(gram: torch.Tensor) -> torch.Tensor:
        g = gram[0]
        k = g.shape[0]
        n = norms(g)
        valid = [i for i in range(k) if float(n[i]) > tol]
        if not valid:
            return torch.zeros(1, k, dtype=torch.float64)
        alpha = 1.0 / len(valid)  # the equal weights, renormalised over the inputs that steer
        units = torch.zeros(k, k, dtype=torch.float64)  # row i: the coefficients of uᵢ = xᵢ/nᵢ
        for i in valid:
            units[i, i] = 1 / n[i]
        mean = alpha * units[valid].sum(0)
        mean_norm = length(g, mean)
        mean = units[valid[0]].clone() if mean_norm < tol else mean / mean_norm
        for _ in range(max_iter):
            dots = (units @ g @ mean).clamp(-1, 1)  # uᵢ·m
            step = torch.zeros(k, dtype=torch.float64)
            for i in valid:
                theta = math.acos(float(dots[i]))
                if theta < tol:
                    continue
                step += alpha * theta / math.sin(theta) * (units[i] - dots[i] * mean)
            step_norm = length(g, step)
            if step_norm < tol:
                break
            mean = math.cos(step_norm) * mean + math.sin(step_norm) * (step / step_norm)
            unit_norm = length(g, mean)
            if unit_norm > tol:
                mean = mean / unit_norm
        return mean.unsqueeze(0)
    return solve


class KarcherBlocks(GramBlocks):
    """karcher's merger: the mean direction m = Σ cᵢxᵢ from :func:`karcher_solve`, rounded to the inputs'
    dtype, then scaled by Σ αᵢnᵢ (float32 norms) in that dtype, as the reference's last step does.

    The scale is applied to each chunk right after it is formed (on the worker, while it is in cache),
    rounded to the inputs' dtype first: ``scale * direction`` with a 0-dim float32 ``scale`` rounds it so.
    """

    scale: torch.Tensor | None = None

    def prepare(self) -> None:
        super().prepare()
        if self.scale is None:
            norms = rounded(torch.diagonal(self.gram()[0]), self.work, sqrt=True)
            alpha = 1.0 / len(self.vectors)
            self.scale = sum(alpha * n for n in norms.unbind())  # type: ignore[assignment]

    def merge_chunk(self, mats: list[torch.Tensor], span: slice, out: torch.Tensor) -> None:
        super().merge_chunk(mats, span, out)
        out.mul_(self.scale.to(out.dtype))  # type: ignore[union-attr]


def slerp_blocks(meta: MergeInputs) -> GramBlocks | Select:
    """slerp's block merger (x-mergehub ``blocks``): t = 0 is the base and t = 1 the other model, unread."""
    if len(meta.tensors) == 1:  # an optional tensor only one model has is copied through
        return Select(0)
    base = meta.base if meta.base is not None else 0
    t = meta.shared["t"]
    if t in (0, 1):
        return Select(base if t == 0 else 1 - base)
    return GramBlocks(meta, [base, 1 - base], None, "flat", slerp_solve(t))


def nuslerp_blocks(meta: MergeInputs) -> GramBlocks | Select:
    """nuslerp's block merger: one vector per tensor, per row, or per column (``nuslerp_row_wise``)."""
    if len(meta.tensors) == 1:
        return Select(0)
    others = non_base(meta)
    t = nuslerp_t(meta.params[others[0]]["weight"], meta.params[others[1]]["weight"])
    flatten, row_wise = meta.shared["nuslerp_flatten"], meta.shared["nuslerp_row_wise"]
    mode = "flat" if flatten else ("columns" if row_wise else "rows")
    return GramBlocks(meta, others, meta.base, mode, nuslerp_solve(t), refine=True)


def multislerp_blocks(meta: MergeInputs) -> GramBlocks | Select:
    """multislerp's block merger; a single non-base input is returned unchanged."""
    others = non_base(meta)
    if len(others) == 1:
        return Select(others[0])
    solve = multislerp_solve([meta.params[i]["weight"] for i in others], meta.shared["normalize_weights"],
                             meta.shared["eps"], meta.name)
    return GramBlocks(meta, others, meta.base, "flat", solve, refine=True)


def karcher_blocks(meta: MergeInputs) -> GramBlocks | Select:
    """karcher's block merger: every input, the base too, with weight 1/N."""
    if len(meta.tensors) == 1:
        return Select(0)
    solve = karcher_solve(meta.shared["max_iter"], meta.shared["tol"])
    return KarcherBlocks(meta, list(range(len(meta.tensors))), None, "flat", solve)
