"""Say what exactly is wrong with a safetensors file that safetensors refused to open.

safetensors checks every header on opening, but some of its messages name neither the
tensor nor the numbers ("invalid shape, data type, or offset for tensor"). When it refuses
a file, :func:`header_problem` reads the header again itself and says which tensor's entry
is wrong and how, so that the user knows whether the download was cut short or the file
was written wrongly. It never reads tensor data.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from mergehub import dtypes

#: safetensors' own limit on the JSON header (100 MB).
MAX_HEADER = 100_000_000


def header_problem(path: Path) -> str | None:
    """What is wrong with ``path``'s header, in one sentence; None when nothing is found."""
    size = path.stat().st_size
    if size < 8:
        return f"the file has only {size} bytes, fewer than the 8 of a safetensors header length"
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > size - 8 or length > MAX_HEADER:
            return (f"its first 8 bytes give a header length of {length} bytes, but the file has only {size} bytes "
                    "(the file is truncated, or not a safetensors file)")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"its {length}-byte header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    return _entries_problem(header, size - 8 - length)


def _entries_problem(header: dict[str, Any], data_size: int) -> str | None:
    """Each entry's byte span against its dtype and shape, then the spans against each other and the file."""
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(name, entry)
        if problem:
            return problem
        start, end = entry["data_offsets"]
        spans.append((start, end, name))
    position, previous = 0, None
    for start, end, name in sorted(spans):
        if start < position:
            return (f"tensor {name}: its data_offsets [{start}, {end}] overlap those of {previous}, "
                    f"which end at {position}")
        if start > position:
            return f"tensor {name}: its data starts at {start}, leaving a gap after byte {position} of the data"
        if end > data_size:
            return (f"tensor {name}: its data_offsets [{start}, {end}] go past the end of the file, which holds "
                    f"{data_size} bytes of tensor data (the file is truncated)")
        position, previous = end, name
    if position != data_size:
        return f"the header describes {position} bytes of tensor data, but the file holds {data_size}"
    return None


def _entry_problem(name: str, entry: Any) -> str | None:
    """One header entry: dtype, shape and data_offsets present, well-formed and agreeing."""
    try:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (TypeError, KeyError):
        return f"tensor {name}: its header entry needs dtype, shape and data_offsets"
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
        return f"tensor {name}: its shape {shape!r} is not a list of sizes"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)):
        return f"tensor {name}: its data_offsets {offsets!r} are not [start, end]"
    start, end = offsets
    if not 0 <= start <= end:
        return f"tensor {name}: its data_offsets [{start}, {end}] do not form a byte range"
    if dtype not in dtypes.SAFETENSORS_CODES:
        return None  # a dtype mergehub does not know: safetensors' own message stands
    needed = math.prod(shape) * dtypes.ITEMSIZE[dtypes.SAFETENSORS_CODES[dtype]]
    if end - start != needed:
        return (f"tensor {name}: its data_offsets [{start}, {end}] span {end - start} bytes, but {dtype} "
                f"of shape {shape} needs {needed}")
    return None
