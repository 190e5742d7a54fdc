"""The records' writer (``RecordWriter``): each phase's line in the file when the phase ends, an
fsync from a background thread (``SYNC_INTERVAL_S``, ``SYNC_BACKLOG_BYTES``, ``CLOSE_SYNC_WAIT_S``),
and the lines a file lost given back (``LINES_KEPT_BYTES`` of them kept); the file operations under
its lock are ``record_file_io``'s.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from greencallbacks import interrupts
from greencallbacks.record_file_io import _close_quietly, _lock_file, _ours_or_zeros, _read_at, _take_back, _write_at

if TYPE_CHECKING:
    from greencallbacks.records import Record

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
