"""The run id a tracker records as: drawn, given, or the first free ``<id>-N`` where the one given is taken.

A tracker draws a random id at construction; a copy, or a fork, of one that has measured nothing
draws its own (``Tracker.__setstate__``, ``draw_in_a_fork``). An id given (``run_id=``) that
already has records where the run writes, or that another session measures now, is recorded as
the first free ``<id>-N`` instead (``avoid_a_run_id_taken``, ``take_a_free_run_id``), said at the
run's first phase (``say_renamed``); a resume continues the id given after all (``resume``).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from greencallbacks import forks
from greencallbacks.ledger import run_ids_in

if TYPE_CHECKING:
    from greencallbacks.tracker import Tracker


def draw_in_a_fork(tracker: "Tracker") -> None:
    """A tracker that has measured nothing, started in a fork of the process that drew its id,
    draws its own, as a copy does (``Tracker.__setstate__``). Lightning's ``ddp_notebook`` / ``ddp_fork``
    fork the ranks of every fit from a notebook whose callback never measures: each fit took the
    notebook's id and numbered its records from 0 again, in one run with the fit before it. (On
    several ranks, rank 0's new id is every rank's: see ``Tracker.start``.)"""
    if (not tracker._run_id_given and tracker.meter is None and tracker.ledger.next_seq == 0
            and tracker.ledger.attempt == 0 and getattr(tracker, "_drawn_in_pid", forks.pid) != forks.pid):
        tracker.ledger.run_id = uuid.uuid4().hex[:12]
        tracker._drawn_in_pid = forks.pid


def avoid_a_run_id_taken(tracker: "Tracker") -> None:
    """A new run whose given id already has records where it writes (a second fit with one
    callback; the script run again) would add to that run's records: its seq numbers repeat and
    each summary covers half of them. It takes the first free ``<id>-N`` instead, said at its
    first phase: a Lightning resume, restored after start, continues the given run after all."""
    if tracker.run_id in _run_ids_taken(tracker):
        take_a_free_run_id(tracker, f"already has records in {tracker.output_dir}, and this training is a new "
                                    "run (not a resume)")


def take_a_free_run_id(tracker: "Tracker", why: str) -> None:
    """Record as the first ``<id>-N`` that has no records here and no session measuring it (the
    claim is taken here), said at the first phase with ``why``."""
    given, taken = tracker.run_id, _run_ids_taken(tracker)
    n = 2
    while f"{given}-{n}" in taken or not tracker._hold_lock(tracker.output_dir, f"{given}-{n}"):
        n += 1
    tracker._renamed_from, tracker._renamed_why, tracker.ledger.run_id = given, why, f"{given}-{n}"


def _run_ids_taken(tracker: "Tracker") -> set[str]:
    """The run ids with records where this run writes, and beside it (``sibling_dirs``)."""
    taken = run_ids_in(tracker.output_dir)
    for directory in tracker.sibling_dirs:
        taken |= run_ids_in(directory)
    return taken


def say_renamed(tracker: "Tracker") -> None:
    given, tracker._renamed_from = tracker._renamed_from, None
    if tracker.reducer.rank == 0:
        from greencallbacks.meter import warn

        warn(f"greencallbacks: run_id {given!r} {tracker._renamed_why}: this training is recorded as "
             f"{tracker.run_id!r}, so the two are not mixed.")
