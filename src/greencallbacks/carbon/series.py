"""Carbon intensity that changes over time, read from a CSV or JSON file.

The series is a step function: each value holds from its timestamp until the next one. The
intensity of an interval is the time-weighted mean over it. Before the first timestamp the first
value is used, after the last timestamp the last one, and the result says it was extrapolated.
Across a gap in the data (a step more than twice the steps either side of it) the
value before the gap holds, and the result says that too, with the year of that value.

File formats, detected from the header or the document's shape; the series says which it read
(``IntensitySeries.format``). Timestamps ISO-8601 (naive ones taken as UTC) or unix seconds,
from 1970 to 2200 (one in milliseconds or nanoseconds is refused, saying so).
- CSV with a header naming a time column (timestamp, time, datetime, start_time) and a value
  column in gCO2eq/kWh (g_per_kwh, gco2eq_per_kwh, intensity_gco2eq_per_kwh, intensity,
  carbon_intensity, value); ``#`` lines are comments.
- Electricity Maps CSV exports: ``Datetime (UTC)`` and ``Carbon intensity gCO₂eq/kWh (...)``
  columns; the life-cycle column is read where there is one (else the direct one), and the series
  says which. Empty cells (hours without data) are skipped.
- WattTime CSV: ``point_time`` (v3) or ``timestamp`` with ``MOER`` (historical v2 files), values
  in lbs/MWh unless a ``units`` column says otherwise; converted to g/kWh.
- JSON: a list of ``{"timestamp": ..., "g_per_kwh": ...}`` objects (same key choices as CSV) or
  of ``[timestamp, value]`` pairs, optionally wrapped as ``{"data": [...]}``; and the answers of
  the UK Carbon Intensity API (``{"data": [{"from", "to", "intensity": {"actual", "forecast"}}]}``),
  WattTime (``{"data": [{"point_time", "value"}], "meta": {"units"}}``) and Electricity Maps
  (``{"history" | "data": [{"datetime", "carbonIntensity"}]}``) saved to a file.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
import os
import select
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable

from greencallbacks.carbon.intensity import Intensity, validate_intensity

TIME_COLUMNS = ("timestamp", "time", "datetime", "start_time")
VALUE_COLUMNS = ("g_per_kwh", "gco2eq_per_kwh", "intensity_gco2eq_per_kwh", "intensity", "carbon_intensity", "value")
GENERIC_FORMAT = "CSV"
SERIES_LICENCE = "user data"


@runtime_checkable
class IntensitySource(Protocol):
    """Anything that can say the mean intensity over a time interval (files now, live sources later)."""

    def mean_between(self, start_unix: float, end_unix: float) -> Intensity: ...


def _malformed(path: str | Path, where: int | str, why: str) -> ValueError:
    """``path`` as the user gave it; ``where``: a line number, or a place in a JSON document such as ``item 3``."""
    place = f"line {where}" if isinstance(where, int) else where
    return ValueError(f"series file {str(path)!r}, {place}: {why}")


# The largest series file read. An hourly series of a century in the widest export read here
# (Electricity Maps' CSV, ~200 bytes a row) is ~175 MB, 5-minute WattTime data of a decade ~100 MB:
# a larger file is no series but something else (a disk image, a file that never ends), and read
# whole it would take the memory of the machine before any line is judged.
MAX_SERIES_BYTES = 1 << 30


def _read_series_text(given: str, file_path: Path) -> str:
    """The text of the series file, or of a pipe named as one (``--intensity <(cat series.csv)``,
    /dev/stdin): the user named it, so it is read as cat reads it, waiting for its writer. A device
    (/dev/zero never ends), a socket, or what is past ``MAX_SERIES_BYTES`` is refused."""
    from greencallbacks.runs import refuse_special_file  # its one owner; lazily: it loads the records reader

    try:
        with open(file_path, "rb", opener=_open_without_blocking) as file:
            mode = os.fstat(file.fileno()).st_mode
            if stat.S_ISFIFO(mode):
                # A pipe the user named (`--intensity <(cat series.csv)`, /dev/stdin) is read to its
                # writer's end, as cat reads it. Until it has data, or a writer came and went, a read
                # would find no writer yet (one started after this command) and end at once: wait.
                _wait_until_readable(file.fileno())
                os.set_blocking(file.fileno(), True)
            elif not stat.S_ISREG(mode):
                refuse_special_file(file_path, "a regular file or pipe", f"series file {given!r}")
            data = file.read(MAX_SERIES_BYTES + 1)  # a file that lies about its size is cut here too
        if len(data) > MAX_SERIES_BYTES:
            raise ValueError(f"series file {given!r} is larger than {MAX_SERIES_BYTES:,} bytes: no intensity "
                             "series is that long")
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"series file {given!r} cannot be read: {error}") from None


def _wait_until_readable(fd: int) -> None:
    poll = getattr(select, "poll", None)
    if poll is not None:  # (select.select is limited to descriptors below 1024)
        waiting = poll()
        waiting.register(fd, select.POLLIN)
        waiting.poll()


def _open_without_blocking(path: str, flags: int) -> int:
    # Opening a named pipe blocks until a writer comes; O_NONBLOCK opens it at once (to be told
    # from a device above before anything waits) and changes nothing for a regular file.
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def parse_timestamp(raw: object) -> float:
    """Unix seconds from a number, a numeric string or an ISO-8601 string (naive = UTC)."""
    if isinstance(raw, bool):
        raise ValueError(f"not a timestamp: {raw!r}")
    if isinstance(raw, (int, float)):
        seconds = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            seconds = float(text)
        except ValueError:
            # fromisoformat before 3.11 does not take a trailing Z.
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
    else:
        raise ValueError(f"not a timestamp: {raw!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite timestamp: {raw!r}")
    return seconds


# The years a series may cover: a unix timestamp outside them is in another unit (a pandas or
# JavaScript export in milliseconds, nanoseconds), not a time, and would price the run at one
# extrapolated value (or overflow the calendar) instead of failing.
EARLIEST_UNIX = 0.0  # 1970-01-01
LATEST_UNIX = 7258118400.0  # 2200-01-01
_SMALLER_UNITS = ((1e3, "milliseconds"), (1e6, "microseconds"), (1e9, "nanoseconds"))


def check_time_range(seconds: float, raw: object) -> float:
    """``seconds`` when it lies in 1970-2200; else ``ValueError`` saying which unit it looks like."""
    if EARLIEST_UNIX <= seconds < LATEST_UNIX:
        return seconds
    # The unit that puts it in 2000-2200, where a series of today's grid would be.
    unit = next((name for factor, name in _SMALLER_UNITS if 946684800.0 <= seconds / factor < LATEST_UNIX), None)
    if unit is not None:
        raise ValueError(f"timestamp {raw!r} is after 2200 read as unix seconds; it looks like {unit} since 1970: "
                         "give seconds or ISO 8601")
    raise ValueError(f"timestamp {raw!r} is outside 1970-2200 (unix seconds or ISO 8601 expected)")


def _parse_value(raw: object) -> float:
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            raise ValueError(f"value {raw!r} is not a number") from None
    return validate_intensity(raw, argument="value")


def _pick_column(names: list[str], choices: tuple[str, ...], what: str = "", kind: str = "column") -> str | None:
    """The one name among ``names`` that is one of ``choices`` (any case), or None. With ``what``
    (``time``, ``value``), two of them are refused as ambiguous: which one holds the series would
    be a guess, and the other ``kind`` (column, key) silently dropped."""
    found = [name for name in names if name.strip().lower() in choices]
    if what and len(found) > 1:
        raise ValueError(f"{' and '.join(repr(name) for name in found)} are each a {what} {kind}: "
                         f"which one holds the series is ambiguous; keep one")
    lowered = {name.strip().lower(): name for name in names}
    return next((lowered[choice] for choice in choices if choice in lowered), None)


def _csv_layout(names: list[str]) -> tuple[str | None, str | None, str | None, str]:
    """(time column, value column, units column, format read) for a CSV header."""
    lowered = [name.strip().lower() for name in names]
    carbon = [name for name, low in zip(names, lowered) if low.startswith("carbon intensity") and "kwh" in low]
    if "datetime (utc)" in lowered and carbon:
        life_cycle = [name for name in carbon if "lca" in name.lower() or "life" in name.lower()]
        value = (life_cycle or carbon)[0]
        which = "life-cycle" if life_cycle else "direct"
        return names[lowered.index("datetime (utc)")], value, None, f"Electricity Maps CSV export ({which} intensity, {value!r})"
    if "point_time" in lowered or "moer" in lowered:
        time = _pick_column(names, ("point_time", "timestamp"), "time")
        value = _pick_column(names, ("value", "moer"), "value")
        return time, value, _pick_column(names, ("units", "unit"), "units"), "WattTime CSV"
    return _pick_column(names, TIME_COLUMNS, "time"), _pick_column(names, VALUE_COLUMNS, "value"), None, GENERIC_FORMAT


def _watttime_value(raw: str, units: str) -> float:
    """A WattTime cell in g/kWh; one out of range is said as written, in the file's unit."""
    from greencallbacks.carbon.live import WATTTIME_UNITS, watttime_g_per_kwh

    text = units.strip().lower() or "lbs_co2_per_mwh"  # WattTime's MOER unit when the file does not say
    if text not in WATTTIME_UNITS:
        raise ValueError(f"unknown units {units!r} ({', '.join(WATTTIME_UNITS)})")
    return watttime_g_per_kwh(_parse_number(raw), text, written=raw.strip())


class _CsvRecords:
    """(first line number, cells) of each CSV record, skipping blank and ``#`` lines between records.

    One reader over the whole text, so a quoted field may hold a newline (a notes column): the
    record is reported at the line where it starts, and a ``#`` line inside such a field is data.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._between_records = True
        self.line = 0  # where the current record starts, for errors

    def _lines(self) -> Iterator[str]:
        for number, line in enumerate(io.StringIO(self._text, newline=""), start=1):
            if self._between_records:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                self.line, self._between_records = number, False
            yield line

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        # The reader asks for another line before handing back a record only when a quoted
        # field is still open, so a record boundary is exactly where it has just handed one back.
        for cells in csv.reader(self._lines()):
            yield self.line, cells
            self._between_records = True


def _csv_rows(path: str, text: str) -> list[tuple[int, list[str]]]:
    records = _CsvRecords(text)
    try:
        return list(records)
    except csv.Error as error:
        raise _malformed(path, records.line, f"not readable as CSV: {error}") from None


def _csv_points(path: str, text: str) -> tuple[list[tuple[int, object, object]], str]:
    """(line number, raw timestamp, value) for each data row of a CSV series, and the format read."""
    numbered = _csv_rows(path, text)
    if not numbered:
        raise _malformed(path, 1, "no header and no data")
    header_line, names = numbered[0]
    try:
        time_column, value_column, units_column, form = _csv_layout(names)
    except ValueError as error:
        raise _malformed(path, header_line, str(error)) from None
    if time_column is None or value_column is None:
        # A spreadsheet's export in many locales separates cells with ';' (or a tab): read with
        # commas, its header is one cell holding them all, and the columns it names are there.
        other = next((sep for sep in (";", "\t") if len(names) == 1 and sep in names[0]), None)
        hint = (f"; its cells are separated by {other!r}, not commas: save it as comma-separated values "
                "(with '.' as the decimal mark)") if other else ""
        raise _malformed(
            path, header_line,
            f"header {names} needs a time column ({', '.join(TIME_COLUMNS)}) "
            f"and a value column ({', '.join(VALUE_COLUMNS)}), or to be an Electricity Maps or WattTime export{hint}",
        )
    time_index, value_index = names.index(time_column), names.index(value_column)
    units_index = names.index(units_column) if units_column is not None else None
    provider = form != GENERIC_FORMAT
    points: list[tuple[int, object, object]] = []
    for number, cells in numbered[1:]:
        # A longer row than the header has a cell of no column: a shifted row or a stray
        # separator, whose values cannot be trusted to be in the columns they seem to be in.
        if len(cells) <= max(time_index, value_index) or len(cells) > len(names):
            raise _malformed(path, number, f"expected {len(names)} columns, got {len(cells)}")
        raw = cells[value_index]
        if provider and not raw.strip():
            continue  # an hour the provider has no value for: the step before holds
        if form == "WattTime CSV":
            try:
                raw = _watttime_value(raw, cells[units_index] if units_index is not None and units_index < len(cells) else "")
            except ValueError as error:
                raise _malformed(path, number, str(error)) from None
        points.append((number, cells[time_index], raw))
    if form == "WattTime CSV":
        form += " (MOER, converted from lbs/MWh to g/kWh)" if units_column is None else " (converted to g/kWh)"
    return points, form


def _parse_number(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError(f"value {raw!r} is not a number") from None


def _provider_json_points(path: str, document: object) -> tuple[list[tuple[int | str, object, object]], str, object] | None:
    """Points of a provider's API answer saved to a file, the format, and the end of its last value
    where the answer gives it (else None); None when ``document`` is not one."""
    from greencallbacks.carbon import live

    if not isinstance(document, dict):
        return None
    items = document.get("data", document.get("history"))
    if isinstance(items, dict):  # the UK regional answer: {"data": {"regionid": ..., "data": [...]}}
        items = items.get("data")
    elif isinstance(items, list) and len(items) == 1 and isinstance(items[0], dict) and "regionid" in items[0]:
        items = items[0].get("data")
    first = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    if "from" in first and "intensity" in first:
        parse, form = live.parse_uk_carbon_intensity, "UK Carbon Intensity API JSON (actual, forecast where no actual)"
    elif "point_time" in first:
        parse, form = live.parse_watttime, "WattTime API JSON (converted to g/kWh)"
    elif "carbonIntensity" in first and "datetime" in first:
        parse, form = live.parse_electricitymaps, "Electricity Maps API JSON"
    else:
        return None
    try:
        points = parse(document)
    except live.LiveSourceError as error:
        raise _malformed(path, 1, str(error)) from None
    end = _uk_end(items) if parse is live.parse_uk_carbon_intensity else None
    return [(f"point {index}", moment, value) for index, (moment, value) in enumerate(points)], form, end


def _uk_end(periods: list) -> object:
    """The ``to`` of the last period with a value: where a UK Carbon Intensity series ends, which
    the answer says (a one-period answer covers its half hour, not the instant it starts)."""
    for period in reversed(periods):
        intensity = period.get("intensity") if isinstance(period, dict) else None
        if isinstance(intensity, dict) and (intensity.get("actual") is not None or intensity.get("forecast") is not None):
            return period.get("to")
    return None


def _json_points(path: str, text: str) -> tuple[list[tuple[int | str, object, object]], str, object]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise _malformed(path, error.lineno, f"invalid JSON: {error.msg}") from None
    provider = _provider_json_points(path, document)
    if provider is not None:
        return provider
    if isinstance(document, dict) and "data" in document:
        document = document["data"]
    if not isinstance(document, list):
        raise _malformed(path, 1, "expected a list of points (or {\"data\": [...]})")
    points: list[tuple[int | str, object, object]] = []
    for index, item in enumerate(document):
        where = f"item {index}"
        if isinstance(item, dict):
            try:
                time_key = _pick_column(list(item), TIME_COLUMNS, "time", "key")
                value_key = _pick_column(list(item), VALUE_COLUMNS, "value", "key")
            except ValueError as error:
                raise _malformed(path, where, str(error)) from None
            if time_key is None or value_key is None:
                raise _malformed(
                    path, where,
                    f"keys {sorted(item)} need a time key ({', '.join(TIME_COLUMNS)}) "
                    f"and a value key ({', '.join(VALUE_COLUMNS)})",
                )
            points.append((where, item[time_key], item[value_key]))
        elif isinstance(item, list) and len(item) == 2:
            points.append((where, item[0], item[1]))
        else:
            raise _malformed(path, where, f"expected an object or a [timestamp, value] pair, got {item!r}")
    return points, "JSON", None


def _series_end(path: str, where: int | str, raw_end: object, last: float) -> float | None:
    """Where the last value ends, read from the file's own ``to`` (None when it has none)."""
    if raw_end is None:
        return None
    try:
        end = check_time_range(parse_timestamp(raw_end), raw_end)
    except ValueError as error:
        raise _malformed(path, where, f"'to': {error}") from None
    if end <= last:
        raise _malformed(path, where, f"'to' {raw_end!r} is not after the period's 'from'")
    return end


# Up to this many steps inside an interval are summed one by one (exactly as a scan would); past
# it, two lookups in the running integral, whose rounding is then negligible against the span.
DIRECT_SUM_MAX_STEPS = 64

# A distance between two timestamps larger than this many times the series' rhythm around it is a
# gap in the data: twice, so one missed row of a provider export (a 2 h hold in an hourly series)
# or a slightly irregular step is not one, while 5 hours missing from an hourly series is. The
# rhythm is local, not one step for the whole file (a file whose resolution changes, hourly data
# then 15-minute data, has no gaps): the larger of the median steps just before and just after,
# GAP_CONTEXT of each, so that one stray row or a second gap nearby does not set it.
GAP_STEPS = 2.0
GAP_CONTEXT = 3


def _gaps(times: tuple[float, ...], steps: list[float]) -> tuple[tuple[float, float], ...]:
    """The stretches without data: where a step is more than GAP_STEPS times the rhythm around it
    (see GAP_CONTEXT). The value before a gap covers one step of that rhythm, as the last value
    covers its own step; the rest, up to the next timestamp, is missing."""
    def median(values: list[float]) -> float:
        return sorted(values)[(len(values) - 1) // 2] if values else 0.0

    gaps = []
    # The rhythm is never below the smallest step: only a step past twice that can be a gap (the
    # usual case, a regular series, then costs one comparison a step).
    least = GAP_STEPS * min(steps, default=0.0)
    for i, step in enumerate(steps):
        if step <= least:
            continue
        rhythm = max(median(steps[max(0, i - GAP_CONTEXT):i]), median(steps[i + 1:i + 1 + GAP_CONTEXT]))
        if rhythm > 0 and step > GAP_STEPS * rhythm:
            gaps.append((times[i] + rhythm, times[i + 1]))
    return tuple(gaps)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class IntensitySeries:
    """A step series of (unix seconds, gCO2eq/kWh), strictly increasing in time.

    Each value holds until the next timestamp; the last one until ``end_unix`` where the file says
    it (a UK Carbon Intensity period's ``to``), else for one step (the smallest gap between
    timestamps, the series' resolution), so an hourly series whose last row is 23:00 covers 23:00
    to 24:00, and a series of one row without an end covers its instant only. Outside that the
    nearest value is used, and said to be extrapolated; so is the value held over a gap (see ``gaps``).
    """

    times_unix: tuple[float, ...]
    values_g_per_kwh: tuple[float, ...]
    name: str
    format: str = GENERIC_FORMAT  # which file format was read, said wherever the series is named
    end_unix: float | None = None  # where the last value ends, when the file says it
    step_s: float = field(init=False, repr=False, compare=False)
    # Integral of the series from its first timestamp to each timestamp: a mean over any span is
    # then two bisects, not a scan (it is asked on the training thread at every logged step).
    _running_integral: tuple[float, ...] = field(init=False, repr=False, compare=False)
    # The stretches without data, (from, to), in time order and disjoint; their ends are bisected
    # so a mean finds its gaps in O(log N) too.
    gaps: tuple[tuple[float, float], ...] = field(init=False, repr=False, compare=False)
    _gap_starts: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _gap_ends: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        times, values = self.times_unix, self.values_g_per_kwh
        running, total = [0.0], 0.0
        for left, right, value in zip(times, times[1:], values):
            total += value * (right - left)
            running.append(total)
        object.__setattr__(self, "_running_integral", tuple(running))
        if self.end_unix is not None and not self.end_unix > times[-1]:
            raise ValueError(f"end_unix ({self.end_unix}) must be after the last timestamp ({times[-1]})")
        steps = [b - a for a, b in zip(times, times[1:])]
        # One value has no step of its own to hold for: its end, where the file says it.
        last_span = 0.0 if self.end_unix is None else self.end_unix - times[-1]
        object.__setattr__(self, "step_s", min(steps, default=last_span))
        gaps = _gaps(times, steps)
        object.__setattr__(self, "gaps", gaps)
        object.__setattr__(self, "_gap_starts", tuple(start for start, _ in gaps))
        object.__setattr__(self, "_gap_ends", tuple(end for _, end in gaps))

    @property
    def coverage(self) -> tuple[float, float]:
        """(first timestamp, end of the last value): where the series has data."""
        return self.times_unix[0], self.end_unix if self.end_unix is not None else self.times_unix[-1] + self.step_s

    @property
    def description(self) -> str:
        """Its name and format; for one point without an end, what it covers, said wherever it is named."""
        if len(self.times_unix) == 1 and self.end_unix is None:
            return f"{self.name} ({self.format}; one point: it covers its own instant only, having no step to hold for)"
        return f"{self.name} ({self.format})"

    @property
    def zone(self) -> str:
        return f"series:{self.name}"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "IntensitySeries":
        given = os.fspath(path)  # as the user wrote it: Path("") reads ".", the directory
        if not given:
            raise ValueError("series file '' is an empty path: give the path of a CSV or JSON file")
        file_path = Path(path)
        text = _read_series_text(given, file_path)
        is_json = file_path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{"))
        raw_end = None
        if is_json:
            raw_points, form, raw_end = _json_points(given, text)
        else:
            raw_points, form = _csv_points(given, text)
        if not raw_points:
            raise _malformed(given, 1, "no data points")
        times: list[float] = []
        values: list[float] = []
        for where, raw_time, raw_value in raw_points:
            try:
                moment = check_time_range(parse_timestamp(raw_time), raw_time)
                value = _parse_value(raw_value)
            except ValueError as error:
                raise _malformed(given, where, str(error)) from None
            if times and moment == times[-1]:
                raise _malformed(given, where, f"duplicate timestamp {raw_time!r}")
            if times and moment < times[-1]:
                raise _malformed(given, where, f"timestamp {raw_time!r} is earlier than the one before it")
            times.append(moment)
            values.append(value)
        end = _series_end(given, raw_points[-1][0], raw_end, times[-1])
        return cls(times_unix=tuple(times), values_g_per_kwh=tuple(values), name=file_path.name, format=form,
                   end_unix=end)

    def value_at(self, moment_unix: float) -> float:
        # The step in force at `moment`: the last timestamp <= moment (the first one before the series).
        index = bisect.bisect_right(self.times_unix, moment_unix) - 1
        return self.values_g_per_kwh[max(index, 0)]

    def integral(self, start_unix: float, end_unix: float) -> float:
        """Integral of the step function over [start, end], in (g/kWh) x seconds. O(log N)."""
        times, values = self.times_unix, self.values_g_per_kwh
        if end_unix <= start_unix:
            return self.value_at(start_unix) * (end_unix - start_unix)
        # The timestamps strictly inside (start, end) are times[first:last].
        first = bisect.bisect_right(times, start_unix)
        last = bisect.bisect_left(times, end_unix, lo=first)
        if last - first > DIRECT_SUM_MAX_STEPS:
            return self._integral_to(end_unix) - self._integral_to(start_unix)
        total = values[max(first - 1, 0)] * ((times[first] if first < last else end_unix) - start_unix)
        for index in range(first, last):
            right = times[index + 1] if index + 1 < last else end_unix
            total += values[index] * (right - times[index])
        return total

    def _integral_to(self, moment_unix: float) -> float:
        """Integral from the first timestamp to ``moment`` (negative before it), the end values held."""
        index = bisect.bisect_right(self.times_unix, moment_unix) - 1
        if index < 0:
            return self.values_g_per_kwh[0] * (moment_unix - self.times_unix[0])
        return self._running_integral[index] + self.values_g_per_kwh[index] * (moment_unix - self.times_unix[index])

    def data_year(self, moment_unix: float) -> int:
        """The year of the value that prices ``moment``: a 2020 series pricing a 2026 run is 2020
        data, and so is a 2026 span inside a gap after the series' last 2025 value."""
        index = bisect.bisect_right(self.times_unix, moment_unix) - 1
        return datetime.fromtimestamp(self.times_unix[max(index, 0)], tz=timezone.utc).year

    def gaps_between(self, start_unix: float, end_unix: float) -> tuple[tuple[float, float], ...]:
        """The gaps (see ``gaps``) that [start, end] reaches into, where a held value prices it."""
        first = bisect.bisect_right(self._gap_ends, start_unix)
        # An instant is in a gap from the gap's first second on; a span only if it goes past it.
        after = bisect.bisect_right if end_unix == start_unix else bisect.bisect_left
        last = after(self._gap_starts, end_unix)
        return self.gaps[first:max(first, last)]

    def mean_between(self, start_unix: float, end_unix: float) -> Intensity:
        if end_unix < start_unix:
            raise ValueError(f"end ({end_unix}) is before start ({start_unix})")
        if end_unix == start_unix:
            g_per_kwh = self.value_at(start_unix)
            how = "value at instant"
        else:
            g_per_kwh = self.integral(start_unix, end_unix) / (end_unix - start_unix)
            how = "time-weighted mean"
        return Intensity(
            g_per_kwh=g_per_kwh,
            source=f"time series {self.description}, {how}{self._extrapolation_note(start_unix, end_unix)}",
            zone=self.zone,
            year=self.data_year(start_unix),
            licence=SERIES_LICENCE,
        )

    def _extrapolation_note(self, start_unix: float, end_unix: float) -> str:
        """What in [start, end] is priced by a value held from elsewhere, or "" when nothing is."""
        covered_from, covered_until = self.coverage
        held = []
        if start_unix < covered_from or end_unix > covered_until:
            held.append("interval outside the series range, nearest value used")
        gaps = self.gaps_between(start_unix, end_unix)
        if len(gaps) == 1:
            held.append(f"held over a gap in the series from {_iso(gaps[0][0])} to {_iso(gaps[0][1])}, "
                        "value before it used")
        elif gaps:
            held.append(f"held over {len(gaps)} gaps in the series, the first from {_iso(gaps[0][0])} to "
                        f"{_iso(gaps[0][1])}, value before each used")
        return f" (extrapolated: {'; '.join(held)})" if held else ""
