"""A disk whose fsync a test scripts, for one file only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def script_fsync(monkeypatch, module, path: Path, fake: Callable[[int], None]) -> None:
    """Make ``module.os.fsync`` call ``fake`` for descriptors of ``path``, the real fsync otherwise.

    ``os.fsync`` is one function for the whole process: a writer left by an earlier test can still
    have an fsync queued on its background thread, which must neither take this test's scripted
    failures nor be counted among its calls (a loaded CI machine ran one that late).
    """
    real = os.fsync

    def fsync(fd: int) -> None:
        return fake(fd) if is_descriptor_of(fd, path) else real(fd)

    monkeypatch.setattr(module.os, "fsync", fsync)


def is_descriptor_of(fd: int, path: Path) -> bool:
    """Whether ``fd`` is open on ``path`` (Linux: through /proc/self/fd)."""
    try:
        return os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(path)
    except OSError:
        return False
