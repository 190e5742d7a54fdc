"""The heartbeat's files: each attempt's open phases, written beside the run's records by every
rank (``Tracker.heartbeat``, through ``write_heartbeat``), for a resume or a report after the
process was killed outright.

Each attempt (a tracker's session) writes files of its own, never over another's; rank r > 0's
part goes to a file of its own too. Read back here, by rank and phase, for the resume to carry
(``resume._resume_carrying``) and the report to count (``runs.load``).
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

from greencallbacks.records import Record, combine_ranks, run_file_name, write_json_atomic

HEARTBEAT_PREFIX = "energy-open-"
HEARTBEAT_GLOB = f"{HEARTBEAT_PREFIX}*.json"  # any run's, any session's, any rank's
HEARTBEAT_SESSION_CHARS = 12  # of the session id, in its heartbeat's name
_TAIL = re.compile(rf"(?:\.[0-9a-f]{{{HEARTBEAT_SESSION_CHARS}}})?(?:\.rank([1-9][0-9]*))?\.json")


def heartbeat_path(directory: Path, run_id: str, rank: int = 0, session: str | None = None) -> Path:
    """Where a session's heartbeat of run ``run_id`` (its open phases, see ``Tracker.heartbeat``) is,
    beside its records: ``energy-open-<run id>.<session>.json``, ``.rank<r>`` before ``.json`` for
    rank r > 0's part. Each session writes a file of its own, never over another's: the ranks of a
    resume read the killed session's each at its own pace, and one that had gone on and replaced
    it left the others without that rank's part (their totals then differed)."""
    tail = (f".{session[:HEARTBEAT_SESSION_CHARS]}" if session else "") + (f".rank{rank}" if rank else "")
    return directory / run_file_name(HEARTBEAT_PREFIX, run_id, tail)


def write_heartbeat(path: Path, *, run_id: str, attempt: int, rank: int, session_id: str | None, written: str,
                    open_records: list[Record]) -> None:
    """Replace the heartbeat at ``path`` (``heartbeat_path``) with ``open_records``, this rank's
    part of the open phases as measured so far, ``written`` at that time (UTC, ISO 8601)."""
    write_json_atomic(path, {
        "schema": "greencallbacks.open/1",
        "run_id": run_id,
        "attempt": attempt,
        "rank": rank,
        "session_id": session_id,  # see heartbeat_parts
        "written": written,
        "open_records": [r.to_dict() for r in open_records],
    })


def heartbeat_files(run_id: str, directories: list[Path]) -> list[tuple[Path, int]]:
    """Every heartbeat of run ``run_id`` in these directories (``heartbeat_path``), with the rank
    whose part it holds."""
    found = []
    # A run id too long for a file name with its tail is cut (``run_file_name``): its heartbeats'
    # names then begin otherwise than the bare one's.
    longest = f".{'0' * HEARTBEAT_SESSION_CHARS}.rank{10 ** 6}.json"
    bases = {heartbeat_path(Path(), run_id).name[:-len(".json")],
             heartbeat_path(Path(), run_id, 10 ** 6, "0" * HEARTBEAT_SESSION_CHARS).name[:-len(longest)]}
    for directory in directories:
        for base in bases:
            for path in sorted(directory.glob(glob.escape(base) + "*.json")) if directory.is_dir() else ():
                match = _TAIL.fullmatch(path.name[len(base):])
                if match and (path, int(match.group(1) or 0)) not in found:
                    found.append((path, int(match.group(1) or 0)))
    return found


def ranks_written(records: list[Record]) -> dict[tuple[str, int, int], set[int] | None]:
    """For each phase (run id, attempt, seq) the records hold, the ranks whose parts they hold;
    None: every rank's (a record summed over the ranks). A run failing on its ranks writes each
    rank's part apart: a rank killed outright (the kernel's OOM killer, on one rank alone) wrote
    none, and its part is in its heartbeat alone."""
    written: dict[tuple[str, int, int], set[int] | None] = {}
    for r in records:
        key = (r.run_id, r.attempt, r.seq)
        held = written.setdefault(key, set())
        if held is not None:
            written[key] = None if r.ranks > 1 else held | {c.get("rank") for c in r.components}
    return written


def heartbeat_records(run_id: str, directories: list[Path],
                      not_held: dict[tuple[str, int, int], set[int] | None] | None = None) -> list[Record]:
    """The phases run ``run_id``'s heartbeats in these directories hold open, each summed over the
    ranks whose part is there (each rank writes its own): for a report of a run killed outright.
    ``not_held`` (``ranks_written``): a rank's part the records hold already is left out."""
    by_phase: dict[tuple[int, int], list[list[Record]]] = {}
    for rank, part in heartbeat_parts(run_id, directories).items():
        for record in part:
            key = (run_id, record.attempt, record.seq)
            if not_held is not None and key in not_held and (not_held[key] is None or rank in not_held[key]):
                continue
            by_phase.setdefault((record.seq, record.attempt), []).append([record])
    return [combine_ranks(per_rank)[0] if len(per_rank) > 1 else per_rank[0][0] for _, per_rank in sorted(by_phase.items())]


def heartbeat_parts(run_id: str, directories: list[Path], not_of: str | None = None) -> dict[int, list[Record]]:
    """Each rank's part of the phases run ``run_id``'s heartbeats in these directories hold open; of
    a phase a rank's part is found in several, the longest measure. A heartbeat torn or edited
    gives none: the checkpoint's open phases stand. ``not_of``: a session whose own heartbeats are
    left out (a resume's: another rank of it may have written its part already, which would read
    as a phase of the killed attempt begun after the checkpoint)."""
    longest: dict[tuple[int, int, int], Record] = {}
    for path, rank in heartbeat_files(run_id, directories):
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("run_id") != run_id or (not_of is not None and saved.get("session_id") == not_of):
                continue
            found = [Record.from_dict(d) for d in saved["open_records"]]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        for record in found:
            key = (rank, record.seq, record.attempt)
            if record.run_id == run_id and (key not in longest or record.duration_s > longest[key].duration_s):
                longest[key] = record
    parts: dict[int, list[Record]] = {}
    for (rank, *_), record in sorted(longest.items()):
        parts.setdefault(rank, []).append(record)
    return parts
