"""One run per output: an exclusive lock on the output's partial directory.

The lock is a ``flock`` on the directory itself, so it needs no lock file to clean up and the
kernel drops it when the process ends, however it ends (``kill -9`` included): a stale lock
cannot outlive its run.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

from mergehub.common.errors import MergehubError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected from each other there
    fcntl = None  # type: ignore[assignment]

OWNER = ".mergehub-owner"


class DirectoryLock:
    """Held while a run writes into ``directory``; a second run gets a clear error instead."""

    def __init__(self, directory: Path, out: Path):
        self.directory = directory
        self.out = out
        self.fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        self.fd = os.open(self.directory, os.O_RDONLY)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self.fd)
                self.fd = None
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise MergehubError(f"another mergehub run{self._owner()} is writing {self.out}",
                                    hint="wait for it to finish, or write to another --out") from None
        (self.directory / OWNER).write_text(f"{os.getpid()}\n")
        return self

    def _owner(self) -> str:
        try:
            return f" (process {int((self.directory / OWNER).read_text())})"
        except (OSError, ValueError):
            return ""

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None
