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
    target = os.path.realpath(path)

    def fsync(fd: int) -> None:
        try:
            mine = os.path.realpath(f"/proc/self/fd/{fd}") == target
        except OSError:
            mine = False
        return fake(fd) if mine else real(fd)

    monkeypatch.setattr(module.os, "fsync", fsync)
