"""Ctrl-C and SIGTERM while writing: stop at the next block boundary, not inside a library call.

A KeyboardInterrupt raised at an arbitrary bytecode can land inside a C extension's call
(safetensors, for one, turns it into a ValueError), which would end the run with a traceback
instead of a clean stop. While the executor writes, the first signal only sets a flag that it
checks between blocks; a second one interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While entered (main thread only), SIGINT/SIGTERM ask the run to stop at a clean point."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # asked twice: do not wait for the block
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Called between blocks: the place where stopping loses nothing and breaks nothing."""
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
