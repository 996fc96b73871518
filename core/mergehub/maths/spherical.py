"""Spherical maths shared by the slerp, nuslerp, multislerp and karcher methods.

Each method's output is a linear combination of its input vectors (the inputs, or their
task vectors when there is a base), and every quantity the reference computes on the way —
norms, cosines, the weighted mean direction, multislerp's tangent, karcher's iterate and
gradient — is a combination of them too. slerp and karcher are *solvers* here: they turn the float64 Gram matrix of the inputs (see
:mod:`mergehub.maths.gram`) into the coefficients of the output, following the reference's formulas,
thresholds and special cases (mergekit 0.1.5, reference §3.2–3.5), and
:class:`mergehub.maths.gram.GramBlocks` applies them block by block (slerp's statistics are float32 in
the reference, so this is exact up to rounding boundaries; karcher's rounded iterates are not
replayed). nuslerp and multislerp compute in the inputs' dtype in the reference, and their
statistics round elementwise terms first, so they are :class:`mergehub.maths.gram.ExactBlocks`: extra
passes sum exactly the terms the reference sums and the output replays its elementwise steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mergehub.common.errors import MergehubError
from mergehub.maths.gram import (
    ExactBlocks,
    GramBlocks,
    Mode,
    Select,
    Solve,
    Term,
    length,
    norms,
    rounded,
    symmetric,
)
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


class NuslerpBlocks(ExactBlocks):
    """nuslerp in the inputs' dtype: pass 0 the norms, pass 1 the dot product of the normalised
    vectors (which rounds elementwise first, so it does not follow from the Gram matrix), then the arc."""

    stages = 2

    def __init__(self, meta: MergeInputs, t: float, mode: Mode):
        self.pair, self.base, self.t = non_base(meta), meta.base, t
        super().__init__(meta, mode)

    def prepare(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        v0, v1 = (chunks[i] for i in self.pair)
        if self.base is None:
            return [v0, v1]
        base = chunks[self.base]
        return [v0 - base, v1 - base, base]

    def terms(self, pass_index: int, vectors: list[torch.Tensor]) -> list[Term]:
        v0, v1 = vectors[0], vectors[1]
        if pass_index == 0:
            return [(v0, True), (v1, True)]
        return [((v0 / self.norm0).mul_(v1 / self.norm1), False)]

    def finish(self, pass_index: int, sums: torch.Tensor) -> None:
        if pass_index == 0:
            n = rounded(sums, self.dtype, sqrt=True).clamp(min=1e-7)
            self.norm0, self.norm1 = self.stat(n[:, 0]), self.stat(n[:, 1])
            return
        cos = self.stat(rounded(sums[:, 0], self.dtype)).clamp(-1, 1)
        self.colinear = (1 - cos.square()) <= 1e-8**2
        theta = torch.acos(torch.where(self.colinear, 0, cos))  # θ = π/2 where lerped: nothing divides by zero
        self.sin_theta = torch.sin(theta)
        self.c0, self.c1 = torch.sin((1 - self.t) * theta), torch.sin(self.t * theta)

    def output(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        v0, v1 = vectors[0], vectors[1]
        t = self.t
        if self.colinear.all():
            result = (1 - t) * v0 + t * v1
        else:
            result = (self.c0 * v0 + self.c1 * v1) / self.sin_theta
            if self.colinear.any():
                result = torch.where(self.colinear, (1 - t) * v0 + t * v1, result)
        return result if self.base is None else vectors[2] + result


class MultislerpBlocks(ExactBlocks):
    """multislerp in the inputs' dtype, whose statistics form a chain: the norms nᵢ, then ‖m‖ of
    m = Σ wᵢuᵢ, then uᵢ·m̂, then ‖τ‖ of the tangent (each needs the previous one to round its terms).

    Pass 0 sums the norms and the Gram matrix; the Gram matrix predicts the later statistics,
    and pass 1 computes all three exactly from the predictions. A statistic is final once the
    values its terms used are confirmed; a wrong prediction asks the executor for one more pass
    (``passes`` grows, up to 4), which almost never happens.
    """

    stages = 4

    def __init__(self, meta: MergeInputs, weights: Sequence[float], normalize_weights: bool, eps: float):
        self.others, self.base, self.eps, self.name = non_base(meta), meta.base, eps, meta.name
        super().__init__(meta, "flat")
        self.passes = min(self.passes, 2)  # raised in finish() when a prediction was wrong
        w = torch.tensor(list(weights), dtype=self.dtype)
        self.w = w / w.sum() if normalize_weights else w
        self.final = False

    def prepare(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack([chunks[i] for i in self.others])
        if self.base is None:
            return [stacked]
        base = chunks[self.base]
        stacked -= base
        return [stacked, base]

    def chain(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(u, m, m̂, τ) of a chunk, with the current ‖m‖ and uᵢ·m̂, in the reference's operations."""
        k = stacked.shape[0]
        w = self.w.view(k, 1, 1)
        units = stacked / self.norms_eps.view(k, 1, 1)
        mean = (units * w).sum(0)
        unit_mean = mean / self.mean_norm
        tangents = units - self.dots.view(k, 1, 1) * unit_mean
        return units, mean, unit_mean, (tangents * w).sum(0)

    def terms(self, pass_index: int, vectors: list[torch.Tensor]) -> list[Term] | None:
        stacked = vectors[0]
        k = stacked.shape[0]
        if pass_index == 0:  # the norms, and the exact products for the predictions
            x = stacked.to(self.acc)
            return [(x[i], True) if i == j else (x[i] * x[j], False) for i in range(k) for j in range(i, k)]
        if self.final:
            return None
        units, mean, unit_mean, tangent = self.chain(stacked)
        return [(mean, True), *((u, False) for u in (units * unit_mean).unbind()), (tangent, True)]

    def finish(self, pass_index: int, sums: torch.Tensor) -> None:
        k = len(self.others)
        if pass_index == 0:
            self.predict(sums[0], k)
            return
        mean_norm = rounded(sums[0, 0], self.dtype, sqrt=True)
        dots = rounded(sums[0, 1:k + 1], self.dtype)
        tangent_norm = rounded(sums[0, k + 1], self.dtype, sqrt=True)
        mean_ok = torch.equal(mean_norm, self.mean_norm)  # the dots were computed with the right ‖m‖
        self.final = (mean_ok and torch.equal(dots, self.dots)) or bool(mean_norm < self.eps)
        self.mean_norm, self.dots, self.tangent_norm = mean_norm, dots, tangent_norm
        if not self.final and self._passes == pass_index + 1 < self.stages:
            self._passes += 1  # the statistics used a wrong prediction: one more pass computes them again

    def predict(self, products: torch.Tensor, k: int) -> None:
        """The norms from pass 0, and predictions of ‖m‖, uᵢ·m̂ and ‖τ‖ from the Gram matrix."""
        gram = torch.zeros(k, k, dtype=torch.float64)
        rows, cols = torch.triu_indices(k, k)
        gram[rows, cols] = products
        gram = symmetric(gram)
        self.norms = rounded(torch.diagonal(gram), self.dtype, sqrt=True).view(k, 1)
        self.norms_eps = self.norms + self.eps
        w = self.w.to(torch.float64)
        c = w / self.norms_eps.view(-1).to(torch.float64)  # Σ wᵢuᵢ in terms of the vectors
        self.mean_norm = rounded(torch.tensor(length(gram, c) ** 2), self.dtype, sqrt=True)
        unit_mean = c / self.mean_norm.to(torch.float64)
        dots = (gram @ unit_mean) / self.norms_eps.view(-1).to(torch.float64)
        self.dots = rounded(dots, self.dtype)
        tangent = c - float(w @ self.dots.to(torch.float64)) * unit_mean
        self.tangent_norm = rounded(torch.tensor(length(gram, tangent) ** 2), self.dtype, sqrt=True)

    def output(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        stacked = vectors[0]
        w = self.w
        if self.mean_norm < self.eps:
            if stacked.shape[0] != 2:
                raise MergehubError(
                    f"multislerp cannot merge {self.name or 'a tensor'}: the weighted mean of the input directions "
                    "is zero", hint="this happens when opposite (antipodal) inputs have weights that cancel; "
                    "change the weights")
            result = stacked[0] * w[0] + stacked[1] * w[1]  # antipodal pair: the weighted sum
        else:
            _, _, unit_mean, tangent = self.chain(stacked)
            r = self.tangent_norm + self.eps
            result = unit_mean * torch.cos(r) + tangent * (torch.sin(r) / r)
            result = result * (self.norms.squeeze(-1) * w).sum()
        return result if self.base is None else result + vectors[1]


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
    dtype, then scaled by Σ αᵢnᵢ (float32 norms) in that dtype, as the reference's last step does."""

    scale: torch.Tensor | None = None

    def merge(self, block: MergeInputs) -> torch.Tensor:
        direction = super().merge(block)
        if self.scale is None:
            work = torch.float64 if direction.dtype == torch.float64 else torch.float32
            norms = rounded(torch.diagonal(self.gram()[0]), work, sqrt=True)
            alpha = 1.0 / len(self.vectors)
            self.scale = sum(alpha * n for n in norms.unbind())  # type: ignore[assignment]
        return self.scale * direction


def slerp_blocks(meta: MergeInputs) -> GramBlocks | Select:
    """slerp's block merger (x-mergehub ``blocks``): t = 0 is the base and t = 1 the other model, unread."""
    if len(meta.tensors) == 1:  # an optional tensor only one model has is copied through
        return Select(0)
    base = meta.base if meta.base is not None else 0
    t = meta.shared["t"]
    if t in (0, 1):
        return Select(base if t == 0 else 1 - base)
    return GramBlocks(meta, [base, 1 - base], None, "flat", slerp_solve(t))


def nuslerp_blocks(meta: MergeInputs) -> NuslerpBlocks | Select:
    """nuslerp's block merger: one vector per tensor, per row, or per column (``nuslerp_row_wise``)."""
    if len(meta.tensors) == 1:
        return Select(0)
    others = non_base(meta)
    t = nuslerp_t(meta.params[others[0]]["weight"], meta.params[others[1]]["weight"])
    flatten, row_wise = meta.shared["nuslerp_flatten"], meta.shared["nuslerp_row_wise"]
    return NuslerpBlocks(meta, t, "flat" if flatten else ("columns" if row_wise else "rows"))


def multislerp_blocks(meta: MergeInputs) -> MultislerpBlocks | Select:
    """multislerp's block merger; a single non-base input is returned unchanged."""
    others = non_base(meta)
    if len(others) == 1:
        return Select(others[0])
    return MultislerpBlocks(meta, [meta.params[i]["weight"] for i in others], meta.shared["normalize_weights"],
                            meta.shared["eps"])


def karcher_blocks(meta: MergeInputs) -> GramBlocks | Select:
    """karcher's block merger: every input, the base too, with weight 1/N."""
    if len(meta.tensors) == 1:
        return Select(0)
    solve = karcher_solve(meta.shared["max_iter"], meta.shared["tol"])
    return KarcherBlocks(meta, list(range(len(meta.tensors))), None, "flat", solve)
