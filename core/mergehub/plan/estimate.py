"""What a plan will cost: bytes to read and write, peak memory, disk and a rough time.

Computed from the plan alone (tensor headers), before anything runs. Byte counts are
exact; the peak-memory figure is an upper bound for the executor's working set (the
inputs of the largest block the executor merges at once within ``--max-memory``, their
working-dtype copies, method temporaries and the result); the time is a rough figure from typical throughputs on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mergehub.common import dtypes
from mergehub.maths.blocks import DEFAULT_MAX_MEMORY, block_peak
from mergehub.plan.planner import OutputTensor, Plan

#: Rough CPU throughputs (bytes/s) used for the time figure.
READ_RATE = 2e9
WRITE_RATE = 0.6e9
COMPUTE_RATE = 0.5e9


@dataclass(frozen=True)
class Estimate:
    method: str
    inputs: list[str]
    layers: int
    tensors: int
    read_bytes: int
    write_bytes: int
    peak_memory_bytes: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def read_bytes(tensor: OutputTensor) -> int:
    return sum(dtypes.nbytes(d, tensor.shape) for d in tensor.in_dtypes)


def peak_bytes(tensor: OutputTensor) -> int:
    """Upper bound of the memory one output tensor needs while it is computed."""
    n = math.prod(tensor.shape)
    work = dtypes.ITEMSIZE[tensor.work_dtype or dtypes.promote(tensor.in_dtypes)] if tensor.floating else 0
    loaded = read_bytes(tensor)
    cast_copies = len(tensor.inputs) * n * work  # inputs in the working dtype, stacked
    temporaries = 3 * n * max(work, 4)  # float32 accumulators, masks, the merged result
    return loaded + cast_copies + temporaries + dtypes.nbytes(tensor.out_dtype, tensor.shape)


def estimate(plan: Plan, max_memory: int = DEFAULT_MAX_MEMORY) -> Estimate:
    """The plan's figures; peak memory is that of the largest block merged within ``max_memory``."""
    kind = plan.recipe.method.blocks
    reads = sum(read_bytes(t) for t in plan.tensors)
    writes = plan.bytes_to_write()
    return Estimate(
        method=plan.recipe.method.name,
        inputs=[str(m.ref) for m in plan.models],
        layers=plan.num_layers,
        tensors=len(plan.tensors),
        read_bytes=reads,
        write_bytes=writes,
        peak_memory_bytes=max((block_peak(t.shape, peak_bytes(t), kind if t.floating else "none", max_memory)
                               for t in plan.tensors), default=0),
        seconds=reads / READ_RATE + writes / WRITE_RATE + reads / COMPUTE_RATE,
    )
