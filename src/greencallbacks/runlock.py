"""Which process measures a run now: a claim per run, held while a session measures it.

A checkpoint lets any process continue its run (a resume, or Lightning 2.5+'s ``validate``
from it). Two processes on one run at once (an evaluation job started while the training goes
on; two fits resumed from one checkpoint in parallel) would each number records from their own
view of the run: seq numbers repeat and neither summary covers the run. The second of them
finds the run claimed, and is measured as a run of its own instead.

The claim is a Unix socket bound to a name in Linux's abstract namespace, made of the records
directory and the run id: no file is written (no lock file to go stale or to clean up), the
kernel frees the name when the process dies, however it dies, and a second bind of the name,
from any process of the host, fails. Where there is no abstract namespace (not Linux), every
run counts as free: the behaviour of a single process. Processes on other hosts sharing the
records over a network file system are not seen.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path


class RunLock:
    """The claim on run ``run_id`` of the records in ``directory``; ``acquire`` never waits."""

    def __init__(self, directory: Path, run_id: str) -> None:
        where = f"{os.path.realpath(directory)}\0{run_id}".encode("utf-8", "surrogateescape")
        self._address = "\0greencallbacks-run-" + hashlib.sha256(where).hexdigest()[:40]
        self._socket: socket.socket | None = None

    def acquire(self) -> bool:
        """Hold the claim; False when another session (of any process on this host) holds it."""
        if self._socket is not None:
            return True
        try:
            claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except (AttributeError, OSError):
            return True  # no Unix sockets: as a single process
        try:
            claim.bind(self._address)
        except OSError as error:
            claim.close()
            return error.errno != errno.EADDRINUSE  # any other error: no abstract namespace here
        self._socket = claim
        return True

    def same_claim(self, other: "RunLock | None") -> bool:
        """Whether ``other`` claims the same run of the same records."""
        return other is not None and other._address == self._address

    def release(self) -> None:
        claim, self._socket = self._socket, None
        if claim is not None:
            claim.close()  # frees the name

    def __getstate__(self) -> dict:
        return {"_address": self._address, "_socket": None}  # a socket is this process's
