"""JSON files written beside the records (the summary, the heartbeat, Keras' resume state): each
replaced whole in one step (``write_json_atomic``; off the caller's thread, ``JsonFileReplacer``),
under a name made from a run id (``run_file_name``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


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
