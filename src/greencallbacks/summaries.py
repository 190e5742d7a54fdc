"""A run's summary file, ``energy-summary.json``: one per directory, its latest run's.

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
from typing import Iterator

from greencallbacks.meter import warn
from greencallbacks.records import run_file_name, write_json_atomic

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
