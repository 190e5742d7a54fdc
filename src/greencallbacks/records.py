"""Records: one JSON object per line, one line per phase, durable as soon as the phase ends.

Every framework writes the same fields. The writer puts each line in the file when its phase
ends, so a record survives the process being killed right after its phase, and fsyncs it from a
background thread (at most every ``SYNC_INTERVAL_S`` unless ``SYNC_BACKLOG_BYTES`` wait, and when
the run ends); the reader skips a
torn line (the process died while writing it) instead of failing, and a writer begins its first
line after one on a line of its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

from greencallbacks import interrupts
from greencallbacks.units import J_PER_KWH
from typing import Callable, Iterable, Sequence

try:
    import fcntl
except ImportError:  # not POSIX: writers of one file are not serialised, nor lines written in place
    fcntl = None  # type: ignore[assignment]

SCHEMA = "greencallbacks.record/1"
PHASES = ("train", "validation", "test", "predict", "other")
RECORDS_FILE = "energy-records.jsonl"

# Seconds between two background fsyncs of a records file. Waking the fsync thread takes the GIL
# from the training thread for ~150 us (2-core VM, measured inside Lightning's epoch-end hooks),
# so phase ends that come quickly share one fsync. Lines in between are already in the page
# cache, which survives the process; the kernel writes them back within ~30 s by itself (Linux
# dirty_expire_centisecs), and ``close`` syncs everything when the run ends.
SYNC_INTERVAL_S = 10.0
# ...or sooner once this many bytes wait for one: phases ending by the thousand within the
# interval must not leave that many records to a machine crash.
SYNC_BACKLOG_BYTES = 256 * 1024
# The most of its written lines a writer keeps (synced ones are forgotten, oldest first, past it):
# what a records file deleted or emptied mid-run is given back (about 500 records).
LINES_KEPT_BYTES = 1024 * 1024
# The longest ``close`` waits for the records' fsync at the end of a run before going on without it.
CLOSE_SYNC_WAIT_S = 2.0


@dataclass(slots=True)
class Record:
    """The energy of one phase of one run (summed over all ranks)."""

    run_id: str
    phase: str
    epoch: int | None
    seq: int  # position of this phase in the run; unique per run_id
    start_time: str  # ISO 8601 UTC
    duration_s: float
    samples: int
    it_energy_kwh: float  # what the measured hardware used, before PUE
    energy_kwh: float  # facility energy, after PUE
    co2eq_g: float
    intensity_gco2eq_per_kwh: float  # energy-weighted mean over the phase
    intensity_source: str
    pue: float
    energy_j_per_sample: float | None
    co2eq_g_per_sample: float | None
    components: list[dict] = field(default_factory=list)
    uncertainty_kwh: float = 0.0  # one standard uncertainty of energy_kwh, from the sensors
    intensity_zone: str = ""
    intensity_year: int | None = None
    intensity_licence: str = ""
    intensity_is_default: bool = False
    pue_source: str = ""
    tokens: int | None = None
    step: int | None = None  # the framework's global step at the end of the phase
    # The prefix of the values this phase logged where one framework call logs several kinds
    # (HF's metric_key_prefix: "eval", "eval_<data set>", "test"); the ``_total`` of that prefix
    # sums the phase's records that carry it. None: the phase's own name and totals.
    metric_prefix: str | None = None
    ranks: int = 1
    hosts: int = 1
    partial: bool = False  # the phase was cut short (exception, interrupt)
    # Written by the resume, from the checkpoint: its attempt was killed before writing it (see
    # ``resume._carry``), so it may follow that attempt's torn last line.
    carried: bool = False
    # Training call of the run this record belongs to: 0 for the first, +1 at every resume from a
    # checkpoint. An epoch an earlier attempt began and a later one redid appears once per attempt.
    attempt: int = 0
    # False when some batch of the phase could not be counted: ``samples`` is then a lower bound
    # and the per-sample values are None rather than wrong.
    samples_counted: bool = True
    framework: str = ""
    # greencallbacks' version that wrote the record (``greencallbacks.__version__``): the release,
    # and from a git checkout the commit as a local label (``0.2.0.dev0+g1a2b3c4d5e6f``); until
    # 2026-12-04 every record said 0.1.0, whatever the code.
    tool_version: str = ""
    # Embodied (manufacturing) CO2eq of the hardware behind ``components`` amortised over this
    # phase (``greencallbacks.embodied``), kept apart from the operational ``co2eq_g`` and never
    # added to it. None: no measured device has a published footprint (or records written before
    # this field existed); 0 would claim the hardware cost nothing.
    embodied_co2eq_g: float | None = None
    embodied_co2eq_g_low: float | None = None
    embodied_co2eq_g_high: float | None = None
    # Seconds of carbon-aware pause inside this phase (the gap before the epoch it delayed); None:
    # no pause. The run's delay spent is the sum, so a resume does not pause again what it paused.
    paused_s: float | None = None
    # A later call of its attempt, in the same process (a test, evaluation or prediction after fit
    # / train, or after another such call, on the same callback): it trains no epoch (the tracker
    # refuses training then), though the framework stamps it with one (HF's last epoch), so what an
    # epoch cost leaves it out. Written only when true: records without it read as they always did.
    later_call: bool = False
    # False when the token count failed on some batch of the phase (a ``token_counter`` that raised
    # or returned no count), on any rank: ``tokens`` is then the other batches' alone, and the phase
    # logs no cost per token. Written only when false: records without it read as they always did.
    tokens_counted: bool = True
    schema: str = SCHEMA

    @property
    def energy_j(self) -> float:
        return self.energy_kwh * 3.6e6

    def to_dict(self) -> dict:
        # schema first, so a human reading the file knows what it is. A shallow copy (components
        # hold plain values): ``dataclasses.asdict`` deep-copies and costs ~4x more per boundary.
        data = {"schema": self.schema}
        for name in _FIELD_NAMES:
            data[name] = getattr(self, name)
        data["components"] = [dict(c) for c in self.components]
        if self.later_call:
            data["later_call"] = True
        if not self.tokens_counted:
            data["tokens_counted"] = False
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        known = {f for f in cls.__dataclass_fields__}
        given = {k: v for k, v in data.items() if k in known}
        _check_types(given)  # a report must not die on "0.001" or null deep inside a sum
        missing = [name for name in _REQUIRED if name not in given]
        if missing:  # said as the record's field, not as Python's "missing positional argument"
            raise TypeError(f"field {missing[0]!r} is missing")
        return cls(**given)


_WRITTEN_WHEN_SET = ("later_call", "tokens_counted")  # see to_dict
_FIELD_NAMES = tuple(f.name for f in fields(Record) if f.name != "schema" and f.name not in _WRITTEN_WHEN_SET)
_REQUIRED = tuple(f.name for f in fields(Record) if f.default is MISSING and f.default_factory is MISSING)

# The JSON types each field must have when read back (null: only where listed, and for numbers).
_NUMBERS = ("duration_s", "it_energy_kwh", "energy_kwh", "co2eq_g", "intensity_gco2eq_per_kwh", "pue", "uncertainty_kwh")
_OPTIONAL_NUMBERS = ("energy_j_per_sample", "co2eq_g_per_sample", "embodied_co2eq_g", "embodied_co2eq_g_low",
                     "embodied_co2eq_g_high", "paused_s")
_INTEGERS = ("seq", "samples", "ranks", "hosts", "attempt")
_OPTIONAL_INTEGERS = ("epoch", "intensity_year", "tokens", "step")
_STRINGS = ("run_id", "phase", "start_time", "intensity_source", "intensity_zone", "intensity_licence", "pue_source",
            "framework", "tool_version")
_OPTIONAL_STRINGS = ("metric_prefix",)
_BOOLEANS = ("partial", "samples_counted", "intensity_is_default", "carried", "later_call", "tokens_counted")


_NONE = type(None)
# Each checked field: the JSON types it may have and what the message says it must be. Built
# once, looked up by name: a report reads every record of a sweep through it (200k records). The
# exact type is tested first (json.loads gives exact types), a subclass apart. null is allowed for
# the numbers: it is the writer's NaN or infinity (JSON has neither); reports refuse it where they sum.
_FIELD_TYPES: dict[str, tuple[frozenset, str]] = {
    **{name: (frozenset({int, float, _NONE}), "a number") for name in _NUMBERS + _OPTIONAL_NUMBERS},
    **{name: (frozenset({int}), "an integer") for name in _INTEGERS},
    **{name: (frozenset({int, _NONE}), "an integer or null") for name in _OPTIONAL_INTEGERS},
    **{name: (frozenset({str}), "a string") for name in _STRINGS},
    **{name: (frozenset({str, _NONE}), "a string or null") for name in _OPTIONAL_STRINGS},
    **{name: (frozenset({bool}), "true or false") for name in _BOOLEANS},
}

# A component's optional keys, as the writer puts them (uncertainty_j is null where a sensor's was
# not finite, as any number of a record).
_COMPONENT_TYPES: dict[str, tuple[frozenset, str]] = {
    "kind": (frozenset({str}), "a string"), "note": (frozenset({str}), "a string"),
    "host": (frozenset({str}), "a string"), "rank": (frozenset({int}), "an integer"),
    "uncertainty_j": (frozenset({int, float, _NONE}), "a number"),
}


def _subclass_allowed(value: object, types: frozenset) -> bool:
    """A subclass of an allowed type (numpy.float64 is a float; records gathered from other ranks
    are Python objects, not JSON), but never a bool for a number."""
    return not isinstance(value, bool) and isinstance(value, tuple(types))


def _check_types(data: dict) -> None:
    """Raise ``TypeError`` naming the first field whose value has the wrong JSON type."""

    def bad(name: str, wanted: str) -> TypeError:
        return TypeError(f"field {name!r} must be {wanted}, got {data[name]!r}")

    for name, value in data.items():
        allowed = _FIELD_TYPES.get(name)
        if allowed is not None and type(value) not in allowed[0] and not _subclass_allowed(value, allowed[0]):
            raise bad(name, allowed[1])
    components = data.get("components", [])
    if not isinstance(components, list) or not all(
        isinstance(c, dict) and isinstance(c.get("energy_j", 0.0), (int, float)) and not isinstance(c.get("energy_j"), bool)
        for c in components
    ):
        raise bad("components", "a list of objects with a numeric energy_j")
    for index, component in enumerate(components):
        # A report names each component by its name and method ("gpu0:counter").
        for key in ("name", "method"):
            if not isinstance(component.get(key), str):
                raise TypeError(f"component {index} of field 'components' needs a string {key!r}, "
                                f"got {component.get(key)!r}")


class RecordWriter:
    """Appends records to a JSONL file: written when the phase ends, fsynced soon after.

    ``write`` returns once the line is in the file (handed to the kernel), so a record survives
    the process being killed right after its phase. The fsync that also makes it survive a
    machine crash runs on a background thread: on a local disk it costs ~0.1-0.5 ms, on a network
    file system tens of ms, and neither belongs in a training loop. A write starts one unless
    one started less than ``SYNC_INTERVAL_S`` ago and fewer than ``SYNC_BACKLOG_BYTES`` wait (a
    later write or ``close`` covers the lines); ``close`` waits for it and syncs the rest.

    Several writers may append to one file (two callbacks in one fit, a sweep's processes in one
    directory): each write holds an advisory ``flock`` on the file, and a writer only ever removes
    bytes of its own write. A write that fails (read-only directory, full disk) takes back what
    part of it went in, warns once and keeps the record in ``pending``; the next write tries
    again, so nothing measured is dropped while the process lives, and training is never stopped
    by it. An fsync that fails means the kernel may have dropped the lines it covered: the next
    write (or ``close``) writes them again where they are. A file that lost lines of this writer
    (deleted, emptied or replaced while the run went on) is found at the next write, said once,
    and given them again, so it holds every record the writer wrote.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.pending: list[Record] = []
        self._warned = False
        self._lost_warned = False
        self._lock_timed_out = False  # another writer held the file's lock too long: no more waits
        self._lock = threading.Lock()
        # Every line this writer put in the file and where: what the file loses is written again
        # from here. One line per phase.
        self._lines: list[bytes] = []
        self._offsets: list[int] = []
        self._forgotten = 0  # lines written before those kept (see _forget_synced_lines)
        self._bytes = 0  # their total size
        self._synced = 0  # how many of them (the first ones) an fsync covered
        self._synced_bytes = 0
        self._sync_failed = False
        # The file may lack lines of this writer (a repair's write failed, the file was gone at an
        # fsync): the next write checks every line.
        self._recheck = False
        self._sync_queued = False
        self._generation = 0  # bumped when lines are written again: a late fsync must not count them
        self._syncer: ThreadPoolExecutor | None = None
        self._next_sync_at = float("-inf")  # time.monotonic() from which a write starts an fsync
        self._confirmed = 0  # lines whose write went in without error (a failed close: doubtful)

    def __getstate__(self) -> dict:
        # A callback is pickled with its tracker's writer (Lightning's ddp_spawn pickles the
        # Trainer; deepcopy): the lock and the fsync thread are this process's, made anew.
        state = dict(self.__dict__)
        state["_lock"], state["_syncer"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def write(self, *records: Record) -> bool:
        """Append ``records`` in one write: a phase end and the gap before it cost one system call."""
        self.pending.extend(records)
        return self.flush()

    def flush(self) -> bool:
        """Write what is pending now (the fsync follows in the background). Whole: a Ctrl-C right
        after the lines reached the file, before they were taken off ``pending``, wrote them twice."""
        with interrupts.held(), self._lock:
            written = self._write_locked()
        if written:
            self._sync_soon()
        return written

    def close(self) -> bool:
        """Write everything, and wait until it is on disk, for at most ``CLOSE_SYNC_WAIT_S``; the
        writer can still be used after. False: not written, or not yet confirmed on disk.

        The lines reach the file (the kernel) before this returns, as at every write. Their fsync
        may hang on a stalled disk or network file system: the end of a run, and a Ctrl-C there
        (held until the run's write-up ends), must not wait for it, so a slow one goes on on its
        own thread, with a warning."""
        syncer, self._syncer = self._syncer, None
        with interrupts.held(), self._lock:
            written = self._write_locked()
        result = [False]

        def sync_everything() -> None:
            result[0] = self._sync_everything(syncer)

        thread = threading.Thread(target=sync_everything, name="greencallbacks-close", daemon=True)
        thread.start()
        thread.join(CLOSE_SYNC_WAIT_S)
        if not thread.is_alive():  # ended: no thread of ours outlives a run that ended well
            return written and result[0]
        from greencallbacks.meter import warn

        warn(f"greencallbacks: the disk has not confirmed the energy records in {self.path} after "
             f"{CLOSE_SYNC_WAIT_S:g} s (a stalled disk or network file system?); they are in the file, and "
             "their sync goes on in the background. A machine crash before it ends could lose them.")
        return False

    def _sync_everything(self, syncer: ThreadPoolExecutor | None) -> bool:
        if syncer is not None:
            syncer.shutdown(wait=True)  # a failed background fsync has the lines written again below
        with self._lock:
            if not self._write_locked():
                return False
            if self._synced == len(self._lines):
                return True
            generation = self._generation
        return self._sync(generation)

    # -- the training thread's part -----------------------------------------------------------
    def _write_locked(self) -> bool:
        if not self.pending and not self._sync_failed and not self._recheck:
            return True
        new = [_json_line(r.to_dict()).encode("utf-8") for r in self.pending]
        try:
            fd = self._open()
        except OSError as error:
            self._warn(error)
            return False
        try:
            lost, start = self._append(fd, new)
        except BaseException as error:
            _close_quietly(fd)
            if not isinstance(error, OSError):
                raise
            self._warn(error)
            return False
        try:
            os.close(fd)  # releases the lock
            closed = None
        except OSError as error:  # a network file system can say here that the write did not reach it
            closed = error
        for i in lost:
            self._offsets[i] = start
            start += len(self._lines[i])
        for line in new:
            self._lines.append(line)
            self._offsets.append(start)
            start += len(line)
            self._bytes += len(line)
        self.pending.clear()
        if closed is not None:
            # In the file or not: the next write (or close) checks each line, as after a failed
            # fsync, and gives the file those it lacks.
            self._sync_failed = True
            self._warn(closed)
            return False
        self._sync_failed = self._recheck = False
        self._confirmed = len(self._lines)
        return True

    def _append(self, fd: int, new: list[bytes]) -> tuple[list[int], int]:
        """Append the ``new`` lines, after those of this writer the file lost; return the lost ones
        (indices) and where the first line written begins. A write that fails is taken back."""
        # Other writers wait while this one appends, and while it takes back a failed write:
        # what it cuts off is then its own. Released when ``fd`` is closed.
        locked = not self._lock_timed_out and _lock_file(fd)
        if locked is None:
            self._lock_timed_out = True
            locked = False
        repairing = False
        begin: int | None = None
        written = 0
        try:
            # One read checks that the file still holds this writer's last line where it put it
            # (deleted, emptied or replaced: it does not); on any doubt, a failed fsync too, every
            # line of its own is checked.
            repairing = self._sync_failed or self._recheck or not self._holds_last_line(fd)
            lost = self._repair(fd) if repairing else []
            begin = os.lseek(fd, 0, os.SEEK_END)
            # A process killed mid-line left half a record (or something else) at the end: ours
            # start on a line of their own, or the reader could not tell them from it. Never cut it
            # off instead: it is not this writer's. Checked at every write, not only the first:
            # another writer sharing the file may have been killed since. No read when the file
            # still ends with this writer's own last line.
            ends_with_ours = bool(self._lines) and begin == self._offsets[-1] + len(self._lines[-1])
            torn = begin and not ends_with_ours and _read_at(fd, 1, begin - 1) != b"\n"
            prefix = b"\n" if torn else b""
            data = prefix + b"".join([self._lines[i] for i in lost] + new)
            view = memoryview(data)
            while written < len(data):  # a short write (a signal, a nearly full disk) goes on where it stopped
                written += os.write(fd, view[written:])
            end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: the end of what was written
        except OSError:
            # A full disk can take half a line: take it back, and the retry writes it whole and once.
            _take_back(fd, begin, written, locked)
            self._recheck = self._recheck or repairing
            raise
        return lost, end - len(data) + len(prefix)

    def _open(self) -> int:
        # os.write on a descriptor, not open(): a text file object costs ~100 us more per
        # write at a phase end on the training thread, and this path needs none of its buffering.
        # Read too: the write checks that the file still holds this writer's lines.
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        try:
            return os.open(self.path, flags, 0o666)
        except FileNotFoundError:  # its directory is not there (yet, or any more)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o666)

    def _holds_last_line(self, fd: int) -> bool:
        """Does the file still hold the last line this writer wrote, where it wrote it? Not when it
        was deleted, emptied or replaced since (other writers only ever add after it)."""
        if not self._lines:
            return True
        return _read_at(fd, len(self._lines[-1]), self._offsets[-1]) == self._lines[-1]

    def _repair(self, fd: int) -> list[int]:
        """Check every line this writer wrote against the file (under its lock) and return those
        it lost, to be appended again. Lines the file holds whose fsync failed are written again in
        place: the kernel may have dropped them (zeros on disk), and an fsync after an error
        reports success without having written them. Nothing of another writer is touched."""
        size = os.lseek(fd, 0, os.SEEK_END)
        content = _read_at(fd, size, 0)
        found: dict[bytes, int] = {}  # each whole line of the file (with its newline) -> where it begins
        start = 0
        for piece in content.split(b"\n")[:-1]:
            found.setdefault(piece + b"\n", start)
            start += len(piece) + 1
        lost = []
        for i, (line, offset) in enumerate(zip(self._lines, self._offsets)):
            there = content[offset:offset + len(line)]
            if _ours_or_zeros(there, line):
                if there != line or (self._sync_failed and i >= self._synced):
                    _write_at(fd, line, offset)
            elif line in found:  # the file was written anew with it elsewhere (an editor)
                self._offsets[i] = found[line]
            else:
                lost.append(i)
        if lost:
            # Cut short inside a line of ours (truncate -s): that part is ours, and goes.
            for i in lost:
                offset, line = self._offsets[i], self._lines[i]
                if offset < size < offset + len(line) and content[offset:] == line[:size - offset]:
                    os.ftruncate(fd, offset)
                    break
            confirmed = sum(i < self._confirmed for i in lost)
            if confirmed:  # the others were not known to be in it: their failure has been said
                self._warn_lost(confirmed, self._forgotten if 0 in lost else 0)
        self._synced = self._synced_bytes = 0  # synced again, all of them
        self._generation += 1
        return lost

    def _sync_soon(self) -> None:
        with self._lock:
            if self._sync_queued or self._synced == len(self._lines):
                return  # the queued fsync will cover these lines too
            now = time.monotonic()
            backlog = self._bytes - self._synced_bytes
            if now < self._next_sync_at and backlog < SYNC_BACKLOG_BYTES:
                return  # a later write, or close, syncs these lines (see SYNC_INTERVAL_S)
            self._next_sync_at = now + SYNC_INTERVAL_S
            self._sync_queued = True
            generation = self._generation
        try:
            if self._syncer is None:
                self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greencallbacks-fsync")
            self._syncer.submit(self._sync, generation)
        except RuntimeError:  # the interpreter is exiting (an atexit write): no new threads, sync here
            self._sync(generation)

    # -- the background part ------------------------------------------------------------------
    def _sync(self, generation: int) -> bool:
        with self._lock:
            self._sync_queued = False
            covered, size = len(self._lines), self._bytes
        try:
            fd = os.open(self.path, os.O_RDONLY)  # fsync is per file, not per descriptor
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:  # deleted: the next write (or close) finds what it lost, and says so
            with self._lock:
                self._recheck = True
            return False
        except OSError as error:
            with self._lock:
                self._sync_failed = True  # whatever it covered is written again, however late it failed
            self._warn(error)
            return False
        with self._lock:
            if generation == self._generation and covered > self._synced:
                self._synced, self._synced_bytes = covered, size
                self._forget_synced_lines()
        return True

    def _forget_synced_lines(self) -> None:
        """Keep at most ``LINES_KEPT_BYTES`` of lines in memory, forgetting the oldest synced ones:
        a run of any length keeps a flat footprint (every line kept grew by ~2 kB a record). A file
        lost later can be given back only the lines still kept; the warning says how many not."""
        drop = dropped_bytes = 0
        while drop < self._synced and self._bytes - dropped_bytes > LINES_KEPT_BYTES:
            dropped_bytes += len(self._lines[drop])
            drop += 1
        if not drop:
            return
        del self._lines[:drop], self._offsets[:drop]
        self._bytes -= dropped_bytes
        self._synced -= drop
        self._synced_bytes -= dropped_bytes
        self._confirmed = max(0, self._confirmed - drop)
        self._forgotten += drop
        self._generation += 1  # a sync in flight counted lines by their old places

    def _warn(self, error: OSError) -> None:
        if self._warned:
            return
        self._warned = True
        from greencallbacks.meter import warn

        warn(
            f"greencallbacks: could not write energy records to {self.path}: {error}. "
            "They are kept in memory and written when the file can be written; training continues."
        )

    def _warn_lost(self, count: int, forgotten: int = 0) -> None:
        if self._lost_warned:
            return
        self._lost_warned = True
        from greencallbacks.meter import warn

        cause = "(the file or its directory was deleted, emptied or replaced while the run went on)"
        if forgotten:
            warn(f"greencallbacks: {self.path} lost {count} energy record(s) written there earlier in this run {cause}, "
                 f"and perhaps the {forgotten} before them, which are no longer kept in memory. The {count} are written "
                 "again; the run's summary still holds its totals.")
            return
        warn(f"greencallbacks: {self.path} lost {count} energy record(s) written there earlier in this run {cause}. "
             "They are written again, so that the file holds every record of the run.")


# The longest a write waits for another writer's lock. Writers hold it for a write's few system
# calls; a lock held longer (a stuck process, a network file system's lock server) must not hold
# training: that writer goes on unserialised for the rest of its run, as without flock.
LOCK_WAIT_S = 1.0


def _lock_file(fd: int) -> bool | None:
    """Hold the file's advisory lock until ``fd`` is closed. False: no lock to be had (not POSIX, a
    file system without flock); None: not free within ``LOCK_WAIT_S``. Either way the writers go
    unserialised."""
    if fcntl is None:
        return False
    deadline = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            deadline = deadline or now + LOCK_WAIT_S
            if now >= deadline:
                return None
            time.sleep(0.0005)
        except OSError:
            return False


def _take_back(fd: int, begin: int | None, written: int, locked: bool) -> None:
    """Cut off what a failed write put at the end of the file from ``begin`` (``written`` bytes,
    as far as it was told), never another writer's line. A part it cannot tell apart is left:
    the next write's end check begins on a line of its own after it."""
    if begin is None:
        return  # it failed before writing
    try:
        size = os.fstat(fd).st_size
        if locked:  # what follows ``begin`` is this write's: every other writer waits for the lock
            if size > begin:
                os.ftruncate(fd, begin)
            return
        end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: the end of the part written
        if size != begin and written and size == end:  # told of a part, and no other writer's line follows it
            os.ftruncate(fd, end - written)
    except OSError:
        pass  # left as it is: see above


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _read_at(fd: int, count: int, offset: int) -> bytes:
    chunks = []
    while count > 0:
        chunk = os.pread(fd, count, offset)
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` of ``fd``, opened to append (where Linux's pwrite appends too)."""
    if fcntl is None:
        return
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_APPEND)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _ours_or_zeros(there: bytes, line: bytes) -> bool:
    """Is ``there`` this writer's ``line``, or it where the disk lost bytes of it (zeros)?"""
    if there == line:
        return True
    return len(there) == len(line) and all(a == b or a == 0 for a, b in zip(there, line))


def _finite(value):
    """NaN and infinities are not JSON: write them as null rather than an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json_line(data: dict) -> str:
    try:
        return json.dumps(data, allow_nan=False, default=str) + "\n"
    except ValueError:  # a NaN or infinity somewhere (rare): walk the record to replace it
        return json.dumps(_finite(data), allow_nan=False, default=str) + "\n"


def write_json_atomic(path: Path, data: dict) -> bool:
    """Replace ``path`` with ``data`` as JSON in one step: a reader never sees half a file, and a
    crash mid-write leaves the previous version. False (no exception) when it cannot be written:
    the records are what matters, and their writer already warned about the directory."""
    return _replace_file(path, json.dumps(data, indent=2, default=str))


def _replace_file(path: Path, text: str) -> bool:
    # A temporary file of its own per writer: the ranks of a failed run each write the summary,
    # and two writers of one temporary name interleave their bytes (a summary of "Extra data").
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        # The folder may not exist yet: Keras names its run in energy-state.json when a fit
        # begins, before the first record's write creates it.
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return False


class JsonFileReplacer:
    """Replaces one JSON file as :func:`write_json_atomic` does, off the caller's thread.

    Creating and renaming the file costs 0.3-1.5 ms here, too much for every epoch on the training
    thread. The JSON text is made on the caller's thread (a snapshot: the data may change right
    after) and written by one worker thread, in order, so the file ends with the last data given.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._worker: ThreadPoolExecutor | None = None

    def write_soon(self, data: dict) -> None:
        text = self._text(data)
        try:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greencallbacks-state")
            self._worker.submit(_replace_file, self.path, text)
        except RuntimeError:  # the interpreter is exiting: no new threads, write here
            _replace_file(self.path, text)

    def write_now(self, data: dict) -> bool:
        """Write ``data`` on this thread, after the writes already queued, and stop the worker."""
        self.close()
        return _replace_file(self.path, self._text(data))

    def close(self) -> None:
        """Wait for the queued writes and stop the worker (a later write starts it again)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)

    @staticmethod
    def _text(data: dict) -> str:
        # Compact: with an indent, json.dumps runs its pure-Python encoder (~270 us here, cold).
        return json.dumps(data, separators=(",", ":"), default=str)


def read_records(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    on_bad_line: Callable[[str], None] | None = None,
    *,
    run_id: str | None = None,
) -> list[Record]:
    """Records from JSONL files (or directories holding ``energy-records.jsonl``).

    A torn line (the writer was killed mid-line: the beginning of a record, cut short) is skipped
    with a warning, wherever it is: a later run appends its records after it. One between two
    records of one run's attempt is no kill (its writer would not have gone on) but damage to the
    file: a record lost from the middle, which would leave totals low without a word, raises
    ``ValueError``. Any other bad line means the file is not a records file, and raises
    ``ValueError`` too; with ``on_bad_line``, it is given the error's text and the line is skipped
    (a run reading its own history back, where one bad line of another run must not hide the whole file).

    ``run_id``: only that run's records; other runs' lines are not decoded or checked (a resume in
    a sweep's shared directory read 100k records of other runs for its own: 9 s).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records: list[Record] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / RECORDS_FILE
        try:
            # utf-8-sig: a file saved by an editor that begins it with a byte order mark (Windows
            # Notepad) was refused whole, "Unexpected UTF-8 BOM" at its first line.
            lines = file_lines(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as error:  # a binary file given by mistake, or one bad line: say where
            line = error.object[:error.start].count(b"\n") + 1
            raise ValueError(f"{path}:{line}: not a greencallbacks records file (not UTF-8 text: {error.reason} "
                             f"at byte {error.start})") from None
        # (run, attempt, carried) of each record of this file in order, other runs' too: a torn
        # line is judged by its neighbours.
        order: list[tuple[str, int | None, bool]] = []
        first = len(records)  # this file's first record
        torn: list[tuple[int, int, str, str]] = []  # (line number, records before it, the line, what was wrong)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if run_id is not None:
                other = run_id_of_line(line)
                # (A whole record of this run may follow another run's torn one on its line: an
                # older writer's resume after a kill. The id found first is the torn one's.)
                if other is not None and other != run_id and line.count(_RECORD_START) < 2:
                    order.append((other, None, False))
                    continue
            where = f"{path}:{number}"
            try:
                try:
                    record = _record_of(line)
                except json.JSONDecodeError as error:
                    record = _whole_before_zeros(line)
                    if record is not None:  # a machine crash lost what followed it: its newline too
                        warnings.warn(f"{where}: skipped the zeros after a whole record (a crash lost the "
                                      "file's end there)", stacklevel=2)
                    else:
                        # Written before writers began their lines on a line of their own: a record
                        # appended right after a torn one (a resume after a kill).
                        after = _after_torn_record(line)
                        if after is None:
                            if not _is_torn(line):
                                raise
                            torn.append((number, len(order), line, str(error)))
                            continue
                        warnings.warn(f"{where}: skipped a torn record before the one that follows it on "
                                      "this line", stacklevel=2)
                        record = _record_of(after)
                if run_id is not None and record.run_id != run_id:
                    order.append((record.run_id, None, False))
                    continue
                records.append(record)
                order.append((record.run_id, record.attempt, record.carried))
            except (ValueError, TypeError, AttributeError) as error:
                # JSON's own words say "line 1 column 1" of the one line decoded, beside its line number in the file.
                said = f"{error.msg} at column {error.colno} (not JSON)" if isinstance(error, json.JSONDecodeError) else error
                if on_bad_line is None:
                    raise ValueError(f"{where}: not a greencallbacks record: {said}") from None
                on_bad_line(f"{where}: not a greencallbacks record: {said}")
        for number, before, line, error in torn:
            where = f"{path}:{number}"
            inside = _attempt_around(order, before)
            # The end of a writer killed mid-line: between other records, of another run than those
            # around it (its own id says so: another process's writer, killed), or written again whole.
            if inside is None or run_id_of_line(line) not in (None, inside[0]) or _written_again(line, inside, records[first:]):
                last = "last " if number == len(lines) else ""
                warnings.warn(f"{where}: skipped a torn {last}line ({error})", stacklevel=2)
                continue
            damaged = (f"{where}: a torn line between two records of attempt {inside[1]} of run {inside[0]!r}: its "
                       "writer went on after it, which a writer killed mid-line does not, so the file was damaged "
                       "and a record is lost; totals without it would be low. Restore the file, or delete the "
                       "line to report without that record")
            if on_bad_line is None:
                raise ValueError(damaged)
            on_bad_line(damaged)
    return records


def file_lines(text: str) -> list[str]:
    """A records file's lines, as the writer ends them and an editor numbers them: at "\n" alone.
    str.splitlines also breaks at U+2028, U+0085 and others, which a JSON string may hold as they
    are (a writer that does not escape non-ASCII): a valid record read as two broken lines."""
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    return lines[:-1] if lines and not lines[-1] else lines


# A record's run id, found without decoding the rest of its line: JSON escapes every quote inside a
# string, so the first `"run_id":` of a line is the key (a component has none).
_RUN_ID = re.compile(r'"run_id"\s*:\s*("(?:[^"\\]|\\.)*")')


def run_id_of_line(line: str) -> str | None:
    """The run id of a records line, without decoding the rest of it; None where none is found
    (a line torn before its end, or no record)."""
    found = _RUN_ID.search(line)
    if found is None:
        return None
    try:
        run_id = json.loads(found.group(1))
    except ValueError:
        return None
    return run_id if isinstance(run_id, str) else None


def run_ids_in_file(path: str | os.PathLike) -> set[str]:
    """The runs that have records in the file at ``path``, read for their ids alone (a sweep's 237 MB
    of records took 10.6 s read whole, 0.4 s so); none where it cannot be read."""
    ids: set[str] = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                found = run_id_of_line(line)
                if found is not None:
                    ids.add(found)
    except OSError:
        pass  # not ours to judge here; reading its records says what is wrong with it
    return ids


def _written_again(line: str, attempt: tuple[str, int], records: Sequence[Record]) -> bool:
    """Is the torn ``line`` a record of ``attempt`` that ``records`` hold whole? (A writer that could
    not take back a write the disk cut short writes it again, whole, after it: nothing is lost.)"""
    seq = re.search(r'"seq": (\d+),', line)
    return seq is not None and any(
        (r.run_id, r.attempt, r.seq) == (*attempt, int(seq.group(1))) for r in records
    )


def _attempt_around(order: Sequence[tuple[str, int | None, bool]], index: int) -> tuple[str, int] | None:
    """The (run, attempt) of the records both before and after position ``index`` of one file's
    records (their ``(run, attempt, carried)`` in ``order``), when they are of one attempt; else None."""
    if 0 < index < len(order):
        before = order[index - 1]
        # A resume writes its killed attempt's open phases (carried) after that attempt's torn line.
        after = next((key for key in order[index:] if not key[2]), None)
        if after is not None and before[1] is not None and before[:2] == after[:2]:
            return before[0], before[1]
    return None


def _record_of(line: str) -> Record:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object (got {_json_kind(data)})")
    if data.get("schema") != SCHEMA:
        raise ValueError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}{_newer_schema(data.get('schema'))}")
    record = Record.from_dict(data)
    _check_component_types(data)
    _check_finite(data)
    _check_non_negative(data)
    _check_possible(data)
    return record


def _newer_schema(schema: object) -> str:
    """What to do about a record of a later version of this schema: said, as "expected .../1"
    alone left the user wondering what was wrong with the file."""
    family, _, version = SCHEMA.rpartition("/")
    found = re.fullmatch(re.escape(family) + r"/(\d+)", schema) if isinstance(schema, str) else None
    if found is None or int(found.group(1)) <= int(version):
        return ""
    from greencallbacks._version import __version__

    return f" (written by a newer greencallbacks than this one, {__version__}: upgrade it to read these records)"


# How the writer begins every line (schema first, as it always has): a torn line begins so. JSON
# escapes every quote inside a string, so it begins a line's record and is found nowhere else in it.
_RECORD_START = json.dumps({"schema": SCHEMA})[:-1]


def _is_torn(line: str) -> bool:
    """Is ``line`` the beginning of a record, cut short? It fails to decode only because it ENDED
    (more text would have made it whole), and it begins as every record does; or its end is zeros,
    what a disk holds where a write had not reached it when the machine stopped. A line with
    anything else wrong, or any other text, is no torn record."""
    written = line.rstrip("\x00")
    if not written.strip():
        return True
    begins = written.lstrip()
    if not (begins.startswith(_RECORD_START) or _RECORD_START.startswith(begins)):
        return False
    try:
        json.loads(written)
    except json.JSONDecodeError as error:
        return _ended_early(error)
    return False  # whole, then zeros: a line of its own the disk lost


def _ended_early(error: json.JSONDecodeError) -> bool:
    """Did the decoder fail only because its text ended?"""
    if error.msg.startswith("Unterminated string"):  # a string still open at the end
        return True
    tail = error.doc[error.pos:]  # what the decoder could not take, up to the end
    if error.msg == "Expecting value":  # a value begun: true, false, null or a negative number
        return tail == "" or tail == "-" or any(word.startswith(tail) for word in ("true", "false", "null"))
    if error.msg == "Invalid \\uXXXX escape":  # a string cut inside a \u escape (JSON's non-ASCII)
        return re.fullmatch(r"u[0-9a-fA-F]{0,4}", tail) is not None
    if error.msg == "Expecting ',' delimiter" and tail:  # a number cut after "1." or "1e"
        number = re.search(r"[-+.\deE]*$", error.doc[:error.pos]).group()
        return re.fullmatch(r"-?(0|[1-9]\d*)(\.|(\.\d+)?[eE][-+]?)", number + tail) is not None
    return tail == ""  # the next key, colon, comma or closing bracket never came


def _whole_before_zeros(line: str) -> Record | None:
    """The whole record a line holds before zeros (what a disk holds where writes had not reached
    it when the machine stopped), else None. The next writer begins on a line of its own after
    them: refused, they made the whole file unreadable."""
    written = line.rstrip("\x00")
    if written == line or not written.strip():
        return None
    try:
        return _record_of(written)
    except json.JSONDecodeError:
        return None  # cut short before the zeros: a torn line, said as one


def _after_torn_record(line: str) -> str | None:
    """The record after a torn one on ``line`` (both on one line: see ``read_records``), else None."""
    start = line.find(_RECORD_START, 1)
    return line[start:] if start > 0 and _is_torn(line[:start]) else None


def record_key(record: Record, file: str | os.PathLike) -> tuple:
    """What one phase's record is, whatever file holds it: two records of one key with the same
    contents are one record read twice (a copied directory, a line appended again), counted once.

    Rank r's own records of a failed distributed run (``energy-records.rank<r>.jsonl``) share their
    seq with rank 0's in the summed file: they are parts of one phase, not copies.
    """
    rank = re.fullmatch(r"energy-records\.rank(\d+)\.jsonl", Path(file).name)
    return record.run_id, record.attempt, record.seq, int(rank.group(1)) if rank else None


def by_run(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Each run's records, runs in the order their first record appears: one pass, where a scan
    of all records per run made a report of a 1,000-run sweep quadratic (minutes)."""
    runs: dict[str, list[Record]] = {}
    for record in records:
        mine = runs.get(record.run_id)
        if mine is None:
            runs[record.run_id] = mine = []
        mine.append(record)
    return runs


# A component's numbers in joules, each summed by a report (the uncertainty in quadrature).
_COMPONENT_ENERGIES = ("energy_j", "uncertainty_j")
_COMPONENT_COUNTS = (*_COMPONENT_ENERGIES, "rank")  # none of them below 0


def _check_component_types(data: dict) -> None:
    """A component's optional keys a report sorts, joins and sums: a null kind or a list for a host
    stopped it with an internal error, a boolean uncertainty counted as 1 J. Only where files are
    read, as ``_check_finite``: a record passed between ranks in memory must not stop training."""
    for index, component in enumerate(data.get("components") or []):
        for key, (types, wanted) in _COMPONENT_TYPES.items():
            if key in component and type(component[key]) not in types and not _subclass_allowed(component[key], types):
                raise TypeError(f"component {index} of field 'components': {key} must be {wanted}, "
                                f"got {component[key]!r}")


def _check_finite(data: dict) -> None:
    """Refuse NaN and infinities that another writer put in a file (``NaN``, ``Infinity``, ``1e999``):
    ours writes them as null, and a sum over them would be NaN. Only where files are read: records
    passed between ranks in memory may carry a NaN, and training must not stop for it."""
    for name in _NUMBERS + _OPTIONAL_NUMBERS:
        value = data.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"field {name!r} is {value!r}, not a finite number (JSON has no NaN or infinity)")
    for index, component in enumerate(data.get("components") or []):
        for key in _COMPONENT_ENERGIES:
            value = component.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"component {index} of field 'components': {key} is {value!r}, not a finite number")


# Quantities no measurement makes negative (the meter never lets a window go below zero): one
# read from a file would be summed into a report's totals, "the training used -995 Wh".
_NON_NEGATIVE = ("duration_s", "it_energy_kwh", "energy_kwh", "co2eq_g", "intensity_gco2eq_per_kwh", "uncertainty_kwh",
                 "energy_j_per_sample", "co2eq_g_per_sample", "embodied_co2eq_g", "embodied_co2eq_g_low",
                 "embodied_co2eq_g_high", "samples", "tokens", "paused_s")


def _check_non_negative(data: dict) -> None:
    """Refuse negative energies, CO2eq, durations and counts in a file (types are already checked)."""
    for name in _NON_NEGATIVE:
        value = data.get(name)
        if value is not None and value < 0:
            raise ValueError(f"field {name!r} is {value!r}, not a number >= 0")
    for index, component in enumerate(data.get("components") or []):
        for key in _COMPONENT_COUNTS:
            value = component.get(key)
            if value is not None and value < 0:
                raise ValueError(f"component {index} of field 'components': {key} is {value!r}, not a number >= 0")


# The PUE and intensity bounds every writer of ours holds to (``carbon.pue.MIN_PUE``/``MAX_PUE``,
# ``carbon.intensity.MAX_INTENSITY_G_PER_KWH``), not imported from there, as that loads the whole
# carbon package (~25 ms) into every reader of records. A record's PUE and intensity are means of
# its parts', which may land a rounding error past the bound.
_MIN_PUE = 1.0
_MAX_PUE = 3.0
_MAX_INTENSITY_G_PER_KWH = 2000.0
_MEAN_ROUNDING = 1 + 1e-9


# The most one record may hold: past these no phase of any run can be, and a report summing
# records near the largest float (1e308, each finite) would overflow to inf and print "nan".
# Energy: the world's electricity in a year (~30,000 TWh = 3e13 kWh). CO2eq: that energy at the
# highest intensity accepted anywhere, about the world's yearly emissions. Time: a century. Sums of
# a billion records at these bounds stay far below overflow.
_MAX_KWH = 3e13
_MAX_CO2EQ_G = _MAX_KWH * _MAX_INTENSITY_G_PER_KWH
_MAX_SECONDS = 100 * 365.25 * 86400
_BOUNDED = (
    *((name, _MAX_KWH, "kWh", "the world's electricity in a year")
      for name in ("it_energy_kwh", "energy_kwh", "uncertainty_kwh")),
    ("energy_j_per_sample", _MAX_KWH * 3.6e6, "J", "the world's electricity in a year"),
    *((name, _MAX_CO2EQ_G, "g", "the world's emissions in a year") for name in (
        "co2eq_g", "co2eq_g_per_sample", "embodied_co2eq_g", "embodied_co2eq_g_low", "embodied_co2eq_g_high")),
    *((name, _MAX_SECONDS, "seconds", "a century") for name in ("duration_s", "paused_s")),
)


def _check_possible(data: dict) -> None:
    """Refuse values no writer of ours puts in a record (types are already checked): a phase a
    report has no row for, an epoch or attempt below 0, no rank, a PUE below 1, no run id, an
    energy, CO2eq or time past any phase's (``_BOUNDED``)."""

    def refuse(name: str, valid: str) -> ValueError:
        return ValueError(f"field {name!r} is {data[name]!r}, not {valid}")

    if data["phase"] not in PHASES:
        raise refuse("phase", "one of " + ", ".join(repr(p) for p in PHASES))
    if not data["run_id"].strip():
        raise refuse("run_id", "a non-empty string")
    for name in ("seq", "attempt", "epoch"):
        if data.get(name) is not None and data[name] < 0:
            raise refuse(name, "an integer >= 0" if name != "epoch" else "null or an integer >= 0")
    for name in ("ranks", "hosts"):
        if name in data and data[name] < 1:
            raise refuse(name, "an integer >= 1")
    if data["pue"] is not None and not _MIN_PUE <= data["pue"] <= _MAX_PUE * _MEAN_ROUNDING:  # null: a NaN
        raise refuse("pue", f"a number from {_MIN_PUE:g} to {_MAX_PUE:g} (facility energy / IT energy)")
    intensity = data.get("intensity_gco2eq_per_kwh")
    if intensity is not None and intensity > _MAX_INTENSITY_G_PER_KWH * _MEAN_ROUNDING:
        raise refuse("intensity_gco2eq_per_kwh", f"a number of gCO2eq/kWh up to {_MAX_INTENSITY_G_PER_KWH:g}")
    for name, most, unit, bound in _BOUNDED:
        if data.get(name) is not None and data[name] > most:
            raise refuse(name, f"a number of {unit} up to {most:.3g} (more than {bound})")
    for index, component in enumerate(data.get("components") or []):
        for key in _COMPONENT_ENERGIES:
            value = component.get(key)
            if value is not None and value > _MAX_KWH * 3.6e6:
                raise ValueError(f"component {index} of field 'components': {key} is {value!r}, not a number of J "
                                 f"up to {_MAX_KWH * 3.6e6:.3g} (more than the world's electricity in a year)")


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words (an array, not a Python list)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "an array", str: "a string"}.get(type(value), type(value).__name__)


# The longest file name most file systems take (NAME_MAX), and the run id's characters kept in a
# name that would be longer (``run_file_name``), with a hash of the whole id.
NAME_MAX_BYTES = 255
KEPT_SUMMARY_ID_CHARS = 100
TEMPORARY_NAME_BYTES = 40  # what _replace_file adds to a name while it writes (".<pid>-<thread>.tmp")


def run_file_name(prefix: str, run_id: str, suffix: str = "") -> str:
    """``<prefix><run id><suffix>.json`` with the run id made a safe file name: its safe part and a
    hash of the whole where it is not one (``exp/1`` and ``exp-1`` are two runs), cut to its first
    ``KEPT_SUMMARY_ID_CHARS`` characters (with the hash) where the name would be too long."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)  # ASCII: as many bytes as characters
    # surrogatepass: an id made from a file name that is not UTF-8 (Path.name keeps its bytes as
    # lone surrogates) stopped the run's write-up with a UnicodeEncodeError.
    digest = "-" + hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    name = f"{prefix}{safe}{digest if safe != run_id else ''}{suffix}.json"
    # With a suffix (a heartbeat, rewritten often), room for the temporary name it is written under.
    if len(name) > NAME_MAX_BYTES - (TEMPORARY_NAME_BYTES if suffix else 0):
        name = f"{prefix}{safe[:KEPT_SUMMARY_ID_CHARS]}{digest}{suffix}.json"
    return name


def with_per_sample(record: Record) -> Record:
    """``record`` with its per-sample values, from its energy and samples (none where uncounted)."""
    if record.samples > 0 and record.samples_counted:
        record.energy_j_per_sample = record.energy_kwh * J_PER_KWH / record.samples
        record.co2eq_g_per_sample = record.co2eq_g / record.samples
    else:
        record.energy_j_per_sample = record.co2eq_g_per_sample = None
    return record


def counted_to_heartbeat(run_records: Sequence[Record]) -> bool:
    """Whether one run's last attempt has phases carried from its heartbeat (``runs.load`` reads
    them beside the records of a run killed outright): then it is counted up to that heartbeat."""
    last = max(r.attempt for r in run_records)
    return any(r.carried and r.attempt == last for r in run_records)


def combine_ranks(per_rank: list[list[Record]]) -> list[Record]:
    """Sum the same phase (same ``seq``) over ranks."""
    by_seq: dict[int, list[Record]] = {}
    for records in per_rank:
        for record in records:
            by_seq.setdefault(record.seq, []).append(record)
    combined = []
    for seq in sorted(by_seq):
        parts = by_seq[seq]
        first = parts[0]
        energy_kwh = sum(r.energy_kwh for r in parts)
        co2eq_g = sum(r.co2eq_g for r in parts)
        components = [c for r in parts for c in r.components]
        # Each rank bills its own devices (the host only where it is measured): a sum, like energy.
        embodied = [r for r in parts if r.embodied_co2eq_g is not None]
        record = replace(
            first,
            **{
                "start_time": min(r.start_time for r in parts),
                "duration_s": max(r.duration_s for r in parts),
                "samples": sum(r.samples for r in parts),
                "samples_counted": all(r.samples_counted for r in parts),
                "tokens": sum(r.tokens or 0 for r in parts) or None,
                # A rank whose count failed (HF's own count is rank 0's alone: another's None is no failure).
                "tokens_counted": all(r.tokens_counted for r in parts),
                "it_energy_kwh": sum(r.it_energy_kwh for r in parts),
                "energy_kwh": energy_kwh,
                "co2eq_g": co2eq_g,
                "intensity_gco2eq_per_kwh": co2eq_g / energy_kwh if energy_kwh > 0 else first.intensity_gco2eq_per_kwh,
                # Each rank prices its part with its own source: one whose live request failed (a
                # rate limit refusing the second of two requests made at once) priced its part at the
                # static fallback. Rank 0's label alone hid that part's source in the sum.
                "intensity_source": "; ".join(dict.fromkeys(r.intensity_source for r in parts)),
                "intensity_licence": "; ".join(dict.fromkeys(
                    term for r in parts for term in (r.intensity_licence or "").split("; ") if term)),
                "uncertainty_kwh": math.hypot(*(r.uncertainty_kwh for r in parts)),
                "components": components,
                "ranks": len(per_rank),
                "hosts": len({c.get("host") for c in components}) or 1,
                "partial": any(r.partial for r in parts),
                "embodied_co2eq_g": sum(r.embodied_co2eq_g for r in embodied) if embodied else None,
                "embodied_co2eq_g_low": sum(r.embodied_co2eq_g_low or 0.0 for r in embodied) if embodied else None,
                "embodied_co2eq_g_high": sum(r.embodied_co2eq_g_high or 0.0 for r in embodied) if embodied else None,
                "step": max((r.step for r in parts if r.step is not None), default=None),
                "paused_s": max((r.paused_s for r in parts if r.paused_s is not None), default=None),
            }
        )
        combined.append(with_per_sample(record))
    return combined
