"""An exclusive lock on a folder, so that two processes never share a training run.

``fcntl.flock`` on ``<folder>/.lock``: the kernel releases the lock when its holder exits, so a
lock left by a killed process (an orphan of a killed Snakemake, a node reboot) is taken over
by the next run without any cleanup, while a second live trainer is refused with the holder's
process id. The lock file records who holds it; its content is informational only.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType


class LockedError(RuntimeError):
    """Another live process holds the lock."""


class FolderLock:
    """``with FolderLock(folder):`` — hold ``folder/.lock`` exclusively, or raise LockedError."""

    def __init__(self, folder: str | Path, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"{self.folder}: another process ({holder}) is using this "
                              f"{self.what}; wait for it to finish or stop it, then rerun"
                              ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
