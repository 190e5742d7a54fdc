"""Which process measures a run now: an advisory lock per run, held while a session measures it.

A checkpoint lets any process continue its run (a resume, or Lightning 2.5+'s ``validate``
from it). Two processes on one run at once (an evaluation job started while the training goes
on; two fits resumed from one checkpoint in parallel) would each number records from their own
view of the run: seq numbers repeat and neither summary covers the run. The second of them
finds the run's lock held, and is measured as a run of its own instead.

The lock is ``flock`` on a small file beside the records (``.energy-<run id>.lock``): the kernel
releases it when the process dies, however it dies, so a crashed run never stays locked. Where
locks are not available (no ``fcntl``, a read-only directory), every run counts as free: the
behaviour of a single process, as before.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """The lock of run ``run_id`` in ``directory``; ``acquire`` never waits."""

    def __init__(self, directory: Path, run_id: str) -> None:
        name = re.sub(r"[^\w.-]", "_", run_id)
        self.path = Path(directory) / f".energy-{name}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Hold the lock; False when another process (or another session here) holds it."""
        if self._fd is not None or fcntl is None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return True  # cannot tell (read-only directory): as a single process
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:  # a file system without locks
            os.close(fd)
            return True
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def __getstate__(self) -> dict:
        return {"path": self.path, "_fd": None}  # a descriptor is this process's
