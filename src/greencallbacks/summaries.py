"""A run's summary file, ``energy-summary.json``: one per directory, its latest run's.

What it holds is the tracker's run as its ledger holds it (``write_run_summary``), or, for a
failed run of several ranks, as every rank's records on disk hold it (``write_every_ranks_summary``).

Runs that share a directory (a notebook's fit run again, ``train()`` called twice, an
out-of-memory retry) each keep theirs: an earlier run's is moved beside it under its run id, and
the move and the write are held against every other process ending in that directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from greencallbacks._version import __version__
from greencallbacks.ledger import Ledger, read_run_records
from greencallbacks.meter import warn
from greencallbacks.records import RECORDS_FILE, run_file_name, write_json_atomic
from greencallbacks.units import J_PER_KWH

if TYPE_CHECKING:
    from greencallbacks.tracker import Tracker

try:
    import fcntl
except ImportError:  # not POSIX: summaries are written unlocked
    fcntl = None  # type: ignore[assignment]

SUMMARY_FILE = "energy-summary.json"
# The longest a run's end waits for another process writing its summary into the same directory
# (~1 ms when all is well): a holder that hangs must not hang this run's end with it.
SUMMARY_LOCK_WAIT_S = 2.0
SUMMARY_LOCK_POLL_S = 0.005


def write_summary(directory: Path, run_id: str, summary: dict) -> bool:
    """Write ``summary`` as ``directory``'s; False where it could not be written (not writable)."""
    path = directory / SUMMARY_FILE
    # Read, keep, write: another run ending in this directory at the same moment, between two of
    # them, moved this run's summary under its own name or lost one of the two.
    with _summaries_held(directory, run_id):
        _keep_another_runs_summary(path, run_id)
        return write_json_atomic(path, summary)


def write_run_summary(tracker: "Tracker") -> bool:
    """``tracker``'s run, as its ledger holds it, as the summary of ``tracker.output_dir``; False
    where it could not be written (its directory is not writable)."""
    assert tracker.output_dir is not None
    summary = {
        "schema": "greencallbacks.summary/1",
        "run_id": tracker.run_id,
        "framework": tracker.framework,
        "tool_version": __version__,
        "energy_kwh": tracker.total_energy_j / J_PER_KWH,
        "co2eq_g": tracker.total_co2eq_g,
        **tracker.embodied_summary(),
        "phases": {p: t.as_dict() for p, t in tracker.totals.items() if t.count},
        "carbon": tracker.carbon.describe(),
        "sensors": tracker.meter.describe() if tracker.meter is not None else [],
        "ranks": tracker.reducer.world_size,
        "attempts": tracker.ledger.attempt + 1,
        # How the call that wrote it ended: "failed" (an exception or Ctrl-C; its open phases are
        # partial records), else "finished". The totals alone read alike either way.
        "ended": "failed" if tracker._failing else "finished",
    }
    if tracker._records_elsewhere:  # earlier attempts written in another directory (see resume._say_records_elsewhere)
        summary["earlier_records"] = tracker._records_elsewhere
    if tracker.gpus_shared:
        summary["gpus_shared"] = tracker.gpus_shared
    if tracker._unmeasured_all:  # in no record: without this, nothing said the GPU energy left them out
        summary["gpus_unmeasured"] = tracker._unmeasured_all
    for key, value in tracker.summary_extra.items():
        # A callable field is made from the totals being written (the budget's use), so that
        # it agrees with them however the run ended.
        value = value(summary) if callable(value) else value
        if value is not None:  # None: nothing to say (a field made only when there is)
            summary[key] = value
    return write_summary(tracker.output_dir, tracker.run_id, summary)


def write_every_ranks_summary(tracker: "Tracker") -> bool:
    """A failed multi-rank run's summary, from every rank's records on disk: rank 0's own
    ledger lacks what the others measured after their last gather (their unfinished phases).
    Every rank writes it after its own records, and again while the records changed meanwhile
    (ranks failing at one instant): whichever rank replaces it last read every rank's records.
    Only where rank 0's records are (a shared directory): a host of its own holds a part.
    False where the summary could not be written."""
    if tracker.output_dir is None or not (tracker.output_dir / RECORDS_FILE).is_file():
        return True
    own = tracker.ledger
    written = False
    records = read_run_records(tracker.run_id, [tracker.output_dir])
    try:
        for _ in range(5):
            merged = Ledger(tracker.run_id)
            merged.resume({"run_id": tracker.run_id}, records)
            merged.attempt = own.attempt
            tracker.ledger = merged
            written = write_run_summary(tracker)
            again = read_run_records(tracker.run_id, [tracker.output_dir])
            if len(again) == len(records):
                break
            records = again
    finally:
        tracker.ledger = own
    return written


def _keep_another_runs_summary(path: Path, run_id: str) -> None:
    """``energy-summary.json`` is its directory's latest run's. An earlier run's there (a notebook's
    fit run again on one Trainer, ``train()`` called twice, an out-of-memory retry) is kept beside
    it as ``energy-summary-<run id>.json`` rather than lost; this run's own copy there, from before
    another run took the name, is out of date and goes."""
    try:
        other = json.loads(path.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        other = None
    if isinstance(other, str) and other and other != run_id:
        kept = kept_summary_path(path, other)
        try:
            os.replace(path, kept)
        except OSError as error:  # the summary to write matters more than the one to keep: said, and replaced
            warn(f"greencallbacks: could not keep run {other!r}'s summary as {kept} ({error}); this run's "
                 f"summary replaces it in {path}.")
    try:
        kept_summary_path(path, run_id).unlink(missing_ok=True)
    except OSError:
        pass  # an out-of-date copy left behind: it names its run, and the records are what count


@contextlib.contextmanager
def _summaries_held(directory: Path, run_id: str) -> Iterator[None]:
    """Hold ``directory``'s summaries for one run's end, against every other process and thread:
    an advisory ``flock`` on the directory itself, so no lock file is left behind. Unlocked where
    there is no ``flock`` (not POSIX, a file system without it), and, said, after
    ``SUMMARY_LOCK_WAIT_S`` of waiting."""
    descriptor = _lock_directory(directory, run_id)
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


def _lock_directory(directory: Path, run_id: str) -> int | None:
    """A descriptor of ``directory`` holding its exclusive lock; None where it is not held."""
    if fcntl is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)  # made by the summary's write otherwise
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return None  # the summary's write says what is wrong with the directory, if anything
    deadline = time.monotonic() + SUMMARY_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(SUMMARY_LOCK_POLL_S)
        except OSError:  # no flock on this file system: as before
            os.close(descriptor)
            return None
    os.close(descriptor)
    warn(f"greencallbacks: another run has been writing its summary in {directory} for over "
         f"{SUMMARY_LOCK_WAIT_S:g} s; run {run_id!r} writes its own without waiting longer, so one of "
         "the two summaries may be lost (the records are complete: `greencallbacks report --run-id` reads them).")
    return None


def kept_summary_path(path: Path, run_id: str) -> Path:
    """The kept summary's name: the run id where it is a safe file name, else its safe part and a
    hash of the whole (``exp/1`` and ``exp-1`` are two runs: one name would lose a summary). An id
    too long for a file name (over ``NAME_MAX_BYTES`` with the rest: the summary it should have kept
    was lost) is cut to its first ``KEPT_SUMMARY_ID_CHARS`` characters, with the hash; every name
    that could be made before is left as it was, so a resume finds a summary kept then."""
    return path.with_name(run_file_name("energy-summary-", run_id))
