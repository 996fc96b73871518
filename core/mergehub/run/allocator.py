"""Keep block-sized temporaries in the process heap instead of fresh pages from the kernel.

Merging in blocks allocates and frees the same few-MB tensors thousands of times. By default
glibc serves each of them with a new ``mmap`` and returns it with ``munmap``, so every block
pays a page fault per 4 KiB page touched: on two Llama-3.2-1B checkpoints that was 2.9 million
faults and more system time than the maths itself. Raising glibc's mmap and trim thresholds
keeps those blocks in the reusable heap; the heap never grows beyond what the blocks need, which
``--max-memory`` bounds.
"""

from __future__ import annotations

import ctypes
import functools
import sys

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations below this come from the heap (glibc caps the value at 32 MiB on 64-bit systems).
MMAP_THRESHOLD = 32 * 1024**2
#: Free memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 256 * 1024**2

_tuned: bool | None = None


def tune() -> bool:
    """Set glibc's thresholds once per process; False where there is no glibc (macOS, musl, Windows)."""
    global _tuned
    if _tuned is None:
        _tuned = _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _tuned


def _mallopt(parameter: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_process_symbols().mallopt(parameter, value))
    except (OSError, AttributeError):  # a libc without mallopt
        return False


@functools.cache
def _process_symbols() -> ctypes.CDLL:
    """The C library the interpreter already runs on. Not ``ctypes.util.find_library``: it forks
    ``ldconfig``, and a fork of a process holding torch briefly doubles its counted private memory."""
    return ctypes.CDLL(None)
