"""Spherical maths shared by the slerp, nuslerp, multislerp and karcher methods.

Every function reproduces the reference semantics (mergekit 0.1.5, reference §3.2–3.5)
including its thresholds, working precision and order of operations, so that merges
are bit-identical to mergekit's. That is why the arc appears in two orders: slerp builds
two scalar coefficients in float32 (:func:`slerp_coefficients`), nuslerp mixes and then
divides by sin θ in the input dtype (:func:`slerp_vectors`). Swapping them changes about
half of slerp's float32 outputs and a third of nuslerp's bfloat16 outputs in the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mergehub.errors import MergehubError
from mergehub.specs import MergeInputs
from mergehub.tensormath import working_dtype

#: slerp reads and writes whole tensors in chunks of this many elements, so its
#: float32 scratch stays small whatever the size of the tensor.
CHUNK_ELEMENTS = 1 << 20


def split_optional_base(inputs: MergeInputs) -> tuple[torch.Tensor | None, list[torch.Tensor], list[dict]]:
    """The base tensor (or None), then the other tensors and their parameters, in recipe order."""
    others = [i for i in range(len(inputs.tensors)) if i != inputs.base]
    base = inputs.tensors[inputs.base] if inputs.base is not None else None
    return base, [inputs.tensors[i] for i in others], [inputs.params[i] for i in others]


def floored_norm(x: torch.Tensor, dim: int | None, floor: float, replace: float | None = None) -> torch.Tensor:
    """‖x‖ along ``dim`` (of the whole tensor when None), kept broadcastable against ``x``.

    A norm at or below ``floor`` is replaced by ``replace`` when given (slerp: 1, i.e.
    the vector is left unnormalised), otherwise raised to ``floor`` (nuslerp).
    """
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=dim is not None)
    if replace is None:
        return norm.clamp(min=floor)
    return torch.where(norm > floor, norm, replace)


def unit_dot(u0: torch.Tensor, u1: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """cos θ of two unit vectors: u0·u1 along ``dim`` (kept), clamped to [−1, 1] so that acos is defined.

    The caller normalises first, by its own rule (see :func:`floored_norm`); dividing the
    dot product by the norms instead would round differently from the reference.
    """
    return (u0 * u1).sum(dim=dim, keepdim=True).clamp(-1, 1)


def angle(cos: torch.Tensor, colinear: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """θ = acos(cos) and sin θ; colinear entries get θ = π/2 so that nothing divides by zero."""
    theta = torch.acos(torch.where(colinear, 0, cos))
    return theta, torch.sin(theta)


def slerp_coefficients(t: torch.Tensor, cos: torch.Tensor, colinear: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin((1−t)θ)/sin θ, sin(tθ)/sin θ), or the lerp weights (1−t, t) where colinear."""
    theta, sin_theta = angle(cos, colinear)
    c0 = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    c1 = torch.where(colinear, t, torch.sin(t * theta) / sin_theta)
    return c0, c1


def slerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor, cos: torch.Tensor,
                  colinear: torch.Tensor) -> torch.Tensor:
    """(sin((1−t)θ)·v0 + sin(tθ)·v1) / sin θ per vector, (1−t)·v0 + t·v1 where colinear."""
    if colinear.numel() == 1:  # one vector: compute only the branch that is used
        if bool(colinear):
            return (1 - t) * v0 + t * v1
        theta, sin_theta = angle(cos, colinear)
        return (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    theta, sin_theta = angle(cos, colinear)
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    return torch.where(colinear, (1 - t) * v0 + t * v1, spherical)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995,
          floor: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation from ``v0`` (t = 0) to ``v1`` (t = 1) over the whole flattened tensors.

    Works in float32 (float64 for float64 inputs) and returns ``v0``'s dtype. The
    unnormalised tensors are mixed; a norm ≤ ``floor`` counts as 1, and when
    |cos θ| > ``dot_threshold`` (near-parallel or near-antiparallel) it is a plain lerp.
    """
    work = working_dtype(v0.dtype)
    a, b = v0.reshape(-1), v1.reshape(-1)
    t_ = torch.tensor(t, dtype=work, device=a.device)
    spans = [slice(s, s + CHUNK_ELEMENTS) for s in range(0, a.numel(), CHUNK_ELEMENTS)]
    if not spans:
        return v0.clone()
    # the norm of per-chunk norms, as the reference computes it
    norm_a = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a[s].to(work)) for s in spans]))
    norm_b = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b[s].to(work)) for s in spans]))
    norm_a = torch.where(norm_a > floor, norm_a, 1)
    norm_b = torch.where(norm_b > floor, norm_b, 1)
    # normalise before multiplying so that the dot product cannot overflow
    dot = torch.stack([((a[s].to(work) / norm_a) * (b[s].to(work) / norm_b)).sum() for s in spans]).sum().clamp(-1, 1)
    c0, c1 = slerp_coefficients(t_, dot, dot.abs() > dot_threshold)
    result = torch.empty_like(a)
    for s in spans:
        result[s] = c0 * a[s].to(work) + c1 * b[s].to(work)
    return result.reshape(v0.shape)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, flatten: bool = True, row_wise: bool = False) -> torch.Tensor:
    """Spherical interpolation in the inputs' dtype, of whole tensors or of their vectors.

    ``flatten``: one vector per tensor. Otherwise one per slice along the last dim
    (the rows of a 2-D weight), or along dim 0 when ``row_wise``. Norms are clamped
    to ≥ 1e-7; vectors count as colinear (and are lerped) only when 1 − cos² ≤ 1e-16.
    """
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    cos = unit_dot(v0 / floored_norm(v0, -1, 1e-7), v1 / floored_norm(v1, -1, 1e-7))
    colinear = (1 - cos.square()) <= 1e-8**2
    result = slerp_vectors(t, v0, v1, cos, colinear)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp_t(w1: float, w2: float) -> float:
    """The interpolation factor of two weights: w2 / (w1 + w2), or ½ when the sum is ~0."""
    total = w1 + w2
    return 0.5 if abs(total) < 1e-6 else w2 / total


def multislerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor | None = None,
               normalize_weights: bool = True, eps: float = 1e-8, name: str = "") -> torch.Tensor:
    """Barycentric interpolation on the hypersphere (in the inputs' dtype).

    Flattened inputs (task vectors when ``base`` is given) are projected to the unit
    sphere, mapped to the tangent space at their weighted mean direction m, averaged
    there and mapped back with the exponential map; the result gets the weighted mean
    norm. A single input is returned unchanged.
    """
    if len(tensors) == 1:
        return tensors[0]
    stacked = torch.stack(list(tensors))
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise MergehubError(
                f"multislerp cannot merge {name or 'a tensor'}: the weighted mean of the input directions is zero",
                hint="this happens when opposite (antipodal) inputs have weights that cancel; change the weights")
        result = (stacked[0] * w[0] + stacked[1] * w[1]).view(stacked.shape[1:])  # antipodal pair: lerp
        return result + base if base is not None else result
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    r = torch.linalg.vector_norm(tangent) + eps
    result = mean * torch.cos(r) + tangent * (torch.sin(r) / r)
    result = (result * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])
    return result + base if base is not None else result


def karcher_mean(tensors: Sequence[torch.Tensor], alphas: Sequence[float], max_iter: int = 10,
                 tol: float = 1e-5) -> torch.Tensor:
    """The weighted Karcher (Riemannian) mean direction of flattened tensors, times their weighted norm.

    Norms are taken in float32 (float64 for float64 inputs); directions stay in the
    inputs' dtype. Inputs with norm ≤ ``tol`` do not steer the direction but still
    count in the norm. Iterates Riemannian gradient steps until the step is < ``tol``.
    """
    if len(tensors) == 1:
        return tensors[0]
    work = working_dtype(tensors[0].dtype)
    norms = [torch.linalg.vector_norm(x.to(work)) for x in tensors]
    units = [torch.zeros_like(x) if n.item() == 0.0 else (x / n).to(x.dtype) for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in valid)
    weighted = [(alphas[i] / total, units[i]) for i in valid]

    mean = torch.zeros_like(weighted[0][1])
    for alpha, unit in weighted:
        mean += alpha * unit
    mean_norm = torch.linalg.vector_norm(mean.to(work))
    mean = weighted[0][1].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)

    for _ in range(max_iter):
        step = torch.zeros_like(mean)
        for alpha, unit in weighted:
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            step += alpha * (theta / torch.sin(theta)) * (unit - dot * mean)
        length = torch.linalg.vector_norm(step.to(work))
        if length.item() < tol:
            break
        mean = (torch.cos(length) * mean + torch.sin(length) * (step / length)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(work))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)

    scale = sum(alpha * n for alpha, n in zip(alphas, norms))
    return scale * mean
