"""Threads: trackers measuring at once in one process, and one tracker used from two threads.

Both are said, never split. The process's CPU and memory sensors measure the process, and a GPU's
the whole device: two trainings measured from two threads at once (two fits in a thread pool) each
bill both, and no sensor tells a process's threads apart. The trackers measuring now are
registered here from their start to their stop (``register`` / ``unregister``), and the later of
two says so at its first phase (``say_measured_at_once``). One tracker's phases begun or counted
into from two threads mix the two threads' samples and time (``say_two_threads``).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greencallbacks.tracker import Tracker

# The trackers measuring now in this process, each with the thread it started in: two trainings
# measured from two threads at once each bill the whole process (see `say_measured_at_once`).
# Weak: a tracker dropped without its end measures nothing more.
_running: "weakref.WeakKeyDictionary[Tracker, threading.Thread]" = weakref.WeakKeyDictionary()
_running_lock = threading.Lock()
# The threads each thread's trackers were said to measure at once with: a thread pool's trials
# (optuna n_jobs=4) form new pairs of trackers at every trial, but few pairs of threads.
_told_at_once: "weakref.WeakKeyDictionary[threading.Thread, weakref.WeakSet[threading.Thread]]" = weakref.WeakKeyDictionary()


def register(tracker: "Tracker") -> None:
    """``tracker`` measures from now, in this thread; checked at its first phase."""
    with _running_lock:
        _running[tracker] = threading.current_thread()
        tracker._concurrency_checked = False


def unregister(tracker: "Tracker") -> None:
    """``tracker`` has stopped measuring."""
    with _running_lock:
        _running.pop(tracker, None)


def say_measured_at_once(tracker: "Tracker") -> None:
    """Warn where a tracker started in another thread of this process measures now (two fits
    in a thread pool): the process's CPU and memory sensors measure the process, the GPU's the
    whole device, so each run is billed both trainings, and nothing here can split them by
    thread. Said at the first phase, when a resume has named the run (Lightning restores after
    start), by the later of the two to get there: once per pair of threads (40 trials of a pool
    of 4 threads said it 39 times, once per pair of runs). Trackers started in one thread
    (two callbacks in one Trainer: two pricings of one training) measure one training, and
    ranks of one run (one run id) run as threads are one job: neither is said."""
    with _running_lock:
        here, tracker._concurrency_checked = _running.get(tracker), True
        if here is None:  # a copy of a running tracker, never started itself
            return
        told = _told_at_once.setdefault(here, weakref.WeakSet())
        at_once = [(other.run_id, thread) for other, thread in list(_running.items())
                   if thread is not here and thread.is_alive() and other.running
                   and other._concurrency_checked and other.run_id != tracker.run_id]
        others = [run_id for run_id, thread in at_once if thread not in told]
        for _, thread in at_once:
            told.add(thread)
            _told_at_once.setdefault(thread, weakref.WeakSet()).add(here)
    if others:
        from greencallbacks.meter import warn

        names = ", ".join(repr(run_id) for run_id in others)
        warn(f"greencallbacks: runs {names} and {tracker.run_id!r} are measured at once in this process, from "
             "different threads: each bills the whole process's CPU time and memory and the whole devices "
             "(no sensor tells a process's threads apart), so each run's figures are both trainings' "
             "and their sum counts that energy twice.")


def say_two_threads(tracker: "Tracker", call: str, thread: str) -> None:
    """Phases of one tracker used from two threads: a call bills, and ``add_samples`` counts,
    to the innermost open phase whatever thread opened it, so one thread's samples and time go
    into the other's phases. Said once per tracker. The check costs ``add_samples`` an int
    comparison, no lock: a count from another thread is noted there and said at the phase's
    end, so a run aborted meanwhile says nothing (the Keras watch counts a failed call's last
    batches from its own thread, then aborts the run)."""
    tracker._counted_elsewhere = ""
    if tracker._said_two_threads or len(tracker._stack) < 2:
        return
    tracker._said_two_threads = True
    names = {t.ident: t.name for t in threading.enumerate()}
    opened = tracker._stack[1]
    from greencallbacks.meter import warn

    warn(f"greencallbacks: Tracker.{call} came from thread {thread!r} while phase "
         f"{opened.phase!r} of run {tracker.run_id!r} was open, begun by thread "
         f"{names.get(tracker._phase_thread, tracker._phase_thread)!r}: a Tracker bills and counts into its innermost "
         "open phase whatever the thread, so one thread's samples and time land in the other's phases. Begin, "
         "count and end a Tracker's phases from one thread (two trainings at once: a Tracker each).")
