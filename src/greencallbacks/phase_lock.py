"""The tracker's phase lock (``_holding_phases``): the one decorator every method that changes
the open phases runs under, so that a heartbeat asked from another thread, and a Ctrl-C, find
them whole. In a module of its own: the tracker and each of its parts use it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from greencallbacks import interrupts

if TYPE_CHECKING:
    from greencallbacks.tracker import Tracker


def _holding_phases(method: Callable | None = None, *, settled: bool = False) -> Callable:
    """Run ``method`` holding the tracker's phase lock: a heartbeat asked from another thread (the
    Keras watch's) reads the open phases only between such calls, never half changed (a phase popped
    and not yet closed, a segment added before the snapshot it ends at). Reentrant, ~0.3 us a call.

    ``settled``: first wait for the write-up of a call that just failed (``watch.settle``; a script
    catching the exception and resuming at once), outside the lock: that write-up, on the watch
    thread, may abort this very tracker, and would wait for the lock the resume held.

    Whole against Ctrl-C too (``interrupts.held``, entered before the lock, ~2 us): landing inside,
    it lost a phase popped and not yet closed, billed an interval twice (added, the snapshot not
    yet moved on), or left a lock acquired (a ``with`` can be interrupted right after its acquire),
    hanging the next run in the process."""
    if method is None:
        return functools.partial(_holding_phases, settled=settled)

    @functools.wraps(method)
    def holding(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        if settled:
            from greencallbacks import watch

            watch.settle()
        with interrupts.held(), self._phases_lock:
            return method(self, *args, **kwargs)
    return holding
