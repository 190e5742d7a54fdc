"""What the records' writer does to a file it may share with other writers: hold its advisory lock
(``_lock_file``, waiting ``LOCK_WAIT_S`` at most), read and write at an offset (``_read_at``,
``_write_at``), take back only a failed write's own part (``_take_back``), and tell its own line
where the disk lost bytes of it (``_ours_or_zeros``).
"""

from __future__ import annotations

import os
import time

try:
    import fcntl
except ImportError:  # not POSIX: writers of one file are not serialised, nor lines written in place
    fcntl = None  # type: ignore[assignment]

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
