"""Ctrl-C held over the steps that must happen whole: a record written and counted, a run stopped.

A ``KeyboardInterrupt`` can be raised between any two bytecodes of the main thread. Landing
between writing a record and noting it written, the record was written again by the write-up that
followed; between counting a record and writing it, it was lost from the file; inside a run's
stop, the meter thread ran on and the summary went stale. ``held()`` delays SIGINT's handler to
the end of such a block, where it runs as it would have (the same handler: Python's raises
``KeyboardInterrupt``), a few microseconds to milliseconds late. Imports nothing of the project.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_HOLDER = "_greencallbacks_holds_sigint"


@contextmanager
def held() -> Iterator[None]:
    """Run the block with SIGINT's handler delayed to its end (main thread only: signal handlers
    run there; elsewhere, or where SIGINT is ignored or left to the system, the block just runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # an interpreter without signal handling
        previous = None
    if not callable(previous) or getattr(previous, _HOLDER, False):
        yield  # SIG_IGN / SIG_DFL, or inside another hold, which delivers it at its own end
        return
    arrived: list[tuple] = []

    def hold(signum, frame) -> None:
        arrived.append((signum, frame))

    setattr(hold, _HOLDER, True)
    try:
        signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for signum, frame in arrived:  # each press, now that the block is whole: Python's own
            previous(signum, frame)    # handler raises KeyboardInterrupt at the first
