"""Records: one JSON object per line, one line per phase, durable as soon as the phase ends.

Every framework writes the same fields. The writer puts each line in the file when its phase
ends, so a record survives the process being killed right after its phase, and fsyncs it from a
background thread (at most every ``SYNC_INTERVAL_S`` unless ``SYNC_BACKLOG_BYTES`` wait, and when
the run ends); the reader skips a
torn line (the process died while writing it) instead of failing, and a writer begins its first
line after one on a line of its own.

The record (``Record``) and its reader (``read_records``) are here; beside them, each in a module of
its own: the schema and what a field may hold (``record_schema``), a file's lines before they are
decoded and torn ones among them (``record_lines``), the writer (``record_writer``) and what it does
to a file under its lock (``record_file_io``), the JSON files beside the records (``json_files``),
and what is worked out over several records (``record_groups``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

from greencallbacks.record_lines import (
    _RECORD_START, _after_torn_record, _attempt_around, _is_torn, _written_again, file_lines, run_id_of_line,
)
from greencallbacks.record_schema import (
    SCHEMA, _check_component_types, _check_finite, _check_non_negative, _check_possible, _check_types, _json_kind,
)

# Defined in the modules above, and importable here as before the split. A test that patches one
# patches it where it is read: the writer's constants in record_writer, LOCK_WAIT_S and fcntl in
# record_file_io, _replace_file and ThreadPoolExecutor (of JsonFileReplacer) in json_files.
from greencallbacks.json_files import KEPT_SUMMARY_ID_CHARS as KEPT_SUMMARY_ID_CHARS
from greencallbacks.json_files import NAME_MAX_BYTES as NAME_MAX_BYTES
from greencallbacks.json_files import TEMPORARY_NAME_BYTES as TEMPORARY_NAME_BYTES
from greencallbacks.json_files import JsonFileReplacer as JsonFileReplacer
from greencallbacks.json_files import run_file_name as run_file_name
from greencallbacks.json_files import write_json_atomic as write_json_atomic
from greencallbacks.record_file_io import LOCK_WAIT_S as LOCK_WAIT_S
from greencallbacks.record_groups import by_run as by_run
from greencallbacks.record_groups import combine_ranks as combine_ranks
from greencallbacks.record_groups import counted_to_heartbeat as counted_to_heartbeat
from greencallbacks.record_groups import record_key as record_key
from greencallbacks.record_groups import with_per_sample as with_per_sample
from greencallbacks.record_lines import run_ids_in_file as run_ids_in_file
from greencallbacks.record_schema import PHASES as PHASES
from greencallbacks.record_writer import CLOSE_SYNC_WAIT_S as CLOSE_SYNC_WAIT_S
from greencallbacks.record_writer import LINES_KEPT_BYTES as LINES_KEPT_BYTES
from greencallbacks.record_writer import SYNC_BACKLOG_BYTES as SYNC_BACKLOG_BYTES
from greencallbacks.record_writer import SYNC_INTERVAL_S as SYNC_INTERVAL_S
from greencallbacks.record_writer import RecordWriter as RecordWriter

RECORDS_FILE = "energy-records.jsonl"


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
