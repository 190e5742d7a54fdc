"""The records' clocks: ``since_boot`` (never steps), ``unix_now`` (the wall clock read once per
process, advanced by ``since_boot``) and ``utc_text`` (a wall time in notes). ``greencallbacks.meter``
re-exports them."""

from __future__ import annotations

import datetime as _dt
import math
import numbers
import threading
import time
from typing import Callable


def _boottime_clock() -> int | None:
    """CLOCK_BOOTTIME where this system has it (Linux since 2.6.39), else None."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None:
        return None
    try:
        time.clock_gettime(clock_id)
    except OSError:
        return None
    return clock_id


_BOOTTIME = _boottime_clock()


def since_boot() -> float:
    """Seconds on a clock that never steps, for wall times advanced from one reading of the wall
    clock (``Meter``'s stamps, carbon-aware pauses). CLOCK_BOOTTIME where there is one: unlike
    CLOCK_MONOTONIC it counts the time suspended, so a laptop suspended mid-run still prices its
    later phases at the hour they ran. Else the monotonic clock."""
    return time.monotonic() if _BOOTTIME is None else time.clock_gettime(_BOOTTIME)


# The wall clock, read once per process, and ``since_boot()`` at that reading (see ``unix_now``).
_anchor: tuple[float, float] | None = None
_anchor_lock = threading.Lock()


def unix_now() -> float:
    """Now on the records' clock (unix seconds): the wall clock read once per process, advanced by
    ``since_boot``. Every meter's stamps and every carbon-aware pause use it. Read once per meter
    instead, ``fit`` then ``test`` of one run (a new meter each) stamped either side of a wall-clock
    step (NTP, a user's ``date -s``): a later phase stamped an hour before an earlier one and
    priced at that hour's intensity, or a pause decided at another hour than its gap was priced.
    So a wall clock that is wrong when first read stays as wrong for the rest of the process."""
    anchor = _anchor or _read_anchor()
    return anchor[0] + max(0.0, since_boot() - anchor[1])


def _read_anchor() -> tuple[float, float]:
    global _anchor
    with _anchor_lock:  # two threads' first reads: one anchor
        if _anchor is None:
            _anchor = (_unix_reading(time.time), since_boot())
        return _anchor


def reset_unix_clock(unix_s: float | None = None) -> None:
    """Anchor ``unix_now`` again: at ``unix_s`` now (a test's fixed time), or at the wall clock's
    next reading (``None``: a test that steps ``time.time``, or ``since_boot``, starts afresh)."""
    global _anchor
    with _anchor_lock:
        _anchor = None if unix_s is None else (_unix_reading(lambda: unix_s), since_boot())


def utc_text(unix_s: float) -> str:
    """A wall time in notes: UTC with its date, as the records' ``start_time`` (never the local zone)."""
    try:
        return _dt.datetime.fromtimestamp(unix_s, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # an injected clock's nonsense: words only
        return f"{unix_s!r} (unix seconds)"


def _unix_reading(wall_clock: Callable[[], float]) -> float:
    reading = wall_clock()
    if isinstance(reading, bool) or not isinstance(reading, numbers.Real) or not math.isfinite(reading):
        raise ValueError(f"wall_clock must return unix seconds (a finite number), got {reading!r}")
    return float(reading)
