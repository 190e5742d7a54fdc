"""A records file's lines before they are decoded: split as the writer ends them (``file_lines``),
their run id read off alone (``run_id_of_line``, ``run_ids_in_file``), and a torn one (the
beginning of a record, cut short: ``_is_torn``) told from damage by where it lies among the file's
records (``_attempt_around``, ``_written_again``).
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Sequence

from greencallbacks.record_schema import SCHEMA

if TYPE_CHECKING:
    from greencallbacks.records import Record


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


def _after_torn_record(line: str) -> str | None:
    """The record after a torn one on ``line`` (both on one line: see ``read_records``), else None."""
    start = line.find(_RECORD_START, 1)
    return line[start:] if start > 0 and _is_torn(line[:start]) else None
