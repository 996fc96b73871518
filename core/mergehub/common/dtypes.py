"""dtype names shared by the core and IO plugins (no torch import at module level)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: safetensors header codes <-> our (torch) dtype names.
SAFETENSORS_CODES = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
CODES_BY_NAME = {name: code for code, name in SAFETENSORS_CODES.items()}
ITEMSIZE = {
    "bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}
FLOATING = {"bfloat16", "float16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"}


def to_torch(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def name_of(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def promote(names: list[str]) -> str:
    """The common dtype of several inputs, as ``torch.promote_types`` decides."""
    import torch

    result = to_torch(names[0])
    for name in names[1:]:
        result = torch.promote_types(result, to_torch(name))
    return name_of(result)


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * ITEMSIZE[dtype]
