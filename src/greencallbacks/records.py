"""Records: one JSON object per line, one line per phase, durable as soon as the phase ends.

Every framework writes the same fields. The writer flushes and fsyncs each line, so a record
survives the process being killed right after its phase; the reader skips a torn last line
(the process died while writing it) instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

SCHEMA = "greencallbacks.record/1"
PHASES = ("train", "validation", "test", "predict", "other")
RECORDS_FILE = "energy-records.jsonl"


@dataclass
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
    ranks: int = 1
    hosts: int = 1
    partial: bool = False  # the phase was cut short (exception, interrupt)
    framework: str = ""
    tool_version: str = ""
    schema: str = SCHEMA

    @property
    def energy_j(self) -> float:
        return self.energy_kwh * 3.6e6

    def to_dict(self) -> dict:
        data = asdict(self)
        # schema first, so a human reading the file knows what it is.
        return {"schema": data.pop("schema"), **data}

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class RecordWriter:
    """Appends records to a JSONL file, each one flushed and fsynced.

    A write that fails (read-only directory, full disk) warns once and keeps the record in
    ``pending``; the next write tries again, so nothing measured is dropped while the process
    lives, and training is never stopped by it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.pending: list[Record] = []
        self._warned = False

    def write(self, record: Record) -> bool:
        self.pending.append(record)
        return self.flush()

    def flush(self) -> bool:
        if not self.pending:
            return True
        size_before: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = "".join(_json_line(r.to_dict()) for r in self.pending)
            size_before = self.path.stat().st_size if self.path.exists() else 0
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            # Take back whatever part of the lines reached the file (a full disk can take half a
            # line; a failed fsync, all of them): the retry writes them again, whole and once.
            if size_before is not None:
                try:
                    os.truncate(self.path, size_before)
                except OSError:
                    pass
            if not self._warned:
                self._warned = True
                from greencallbacks.meter import warn

                warn(
                    f"greencallbacks: could not write energy records to {self.path}: {error}. "
                    "They are kept in memory and written when the file can be written; training continues."
                )
            return False
        self.pending.clear()
        return True


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
    return json.dumps(_finite(data), allow_nan=False, default=str) + "\n"


def read_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Record]:
    """Records from JSONL files (or directories holding ``energy-records.jsonl``).

    A torn last line (the writer was killed mid-line) is skipped with a warning; a bad line
    anywhere else means the file is not a records file, and raises ``ValueError``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records: list[Record] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / RECORDS_FILE
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if data.get("schema") != SCHEMA:
                    raise ValueError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
                records.append(Record.from_dict(data))
            except (ValueError, TypeError, AttributeError) as error:
                if number == len(lines):
                    warnings.warn(f"{path}:{number}: skipped a torn last line ({error})", stacklevel=2)
                    continue
                raise ValueError(f"{path}:{number}: not a greencallbacks record: {error}") from None
    return records
