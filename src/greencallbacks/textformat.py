"""Numbers and tables as people read them: one helper for every report, table and plot.

- ``markdown_table``: the one Markdown table writer of ``report``, ``whatif`` and the CLI.
- ``pick_unit``: kWh / Wh / mWh (and g / mg, J / mJ ...) so that a column reads 12.3, not 1.23e-05.
- ``value_and_error``: a mean and its standard error rounded together (2 significant digits of
  the error, the mean to the same decimal place), so "5.07 ± 0.50", never "5.070e-06 ± 5.023e-07";
  ``column_texts`` the same for a table's column, in one notation (plain, or one exponent for it).
- ``csv_number``: 12 significant digits, enough to round-trip what a sensor can tell and short
  enough to read (``56.039``, not ``56.038999999999994``).
- ``plain_where_needed``: a stream that cannot encode "±" (``PYTHONIOENCODING=ascii``, a Latin-1
  terminal) writes "+/-" instead, not a UnicodeEncodeError after the work is done.
"""

from __future__ import annotations

import codecs
import math
import re
import unicodedata
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

from greencallbacks.checks import one_line

# A difference below this share of a value is the rounding of float sums, not data: repeats that
# summed the same joules in another order read "417 ± 0", not "417 ± 2.7e-14".
NOISE = 1e-12

# (unit, factor from the base unit), largest unit first.
ENERGY_UNITS = (("kWh", 1.0), ("Wh", 1e3), ("mWh", 1e6))  # base: kWh
MASS_UNITS = (("kg", 1e-3), ("g", 1.0), ("mg", 1e3))  # base: g
JOULE_UNITS = (("kJ", 1e-3), ("J", 1.0), ("mJ", 1e3), ("µJ", 1e6))  # base: J
COUNT_UNITS = (("G", 1e-9), ("M", 1e-6), ("k", 1e-3), ("", 1.0))  # base: one (tokens: 1.23 M)


def pick_unit(values: Iterable[float | None], units: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The largest unit in which the largest value is at least 1 (the smallest unit if none is).

    All zeros (or no value) read in the base unit, the one of factor 1.
    """
    finite = [abs(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    # As ``number`` shows it (three significant digits): 0.9996 Wh read "1000 mWh", not "1.00 Wh".
    largest = float(f"{max(finite, default=0.0):.2e}")
    if largest == 0.0:
        return next((unit for unit in units if unit[1] == 1.0), units[0])
    for unit, factor in units:
        if largest * factor >= 1.0:
            return unit, factor
    return units[-1]


def number(value: float | int | None, digits: int = 3) -> str:
    """``digits`` significant digits, plain between 1e-3 and 1e6, scientific outside; None: n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    value = float(f"{value:.{digits - 1}e}")  # rounded first, so 0.99996 reads 1.00, not 1.000
    magnitude = math.floor(math.log10(abs(value)))
    if -3 <= magnitude < 6:
        decimals = max(0, digits - 1 - magnitude)
        return f"{value:.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def value_and_error(mean: float | None, error: float | None, digits: int = 3) -> tuple[str, str | None]:
    """The mean and its error as text, rounded together; ``error`` None (one run): the mean alone."""
    if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
        return "n/a", None
    if error is None or not math.isfinite(error):
        return number(mean, digits), None
    if error <= abs(mean) * NOISE:  # runs equal but for the order of their float sums
        return number(mean, digits), "0"
    decimals = 1 - math.floor(math.log10(abs(error)))  # two significant digits of the error
    if decimals <= 6:
        return _rounded_together(mean, error, decimals)
    # Tiny values: a shared exponent reads better than nine decimals ("5.07e-6 ± 0.50e-6"). The
    # mean's exponent as rounded to the error's place: 9.96e-8 ± 1e-8 read "10.0e-8 ± 1.0e-8", and a
    # mean far below its error took an exponent of its own (1e-300 ± 1e-9: a 300-digit error).
    rounded = round(mean, decimals)
    exponent = math.floor(math.log10(abs(rounded))) if rounded else math.floor(math.log10(abs(error)))
    decimals += exponent  # the same digits, counted after the mean's first one
    if decimals > 6:
        # The error is below the mean's last digit (repeats that agree to 7+ digits): no shared
        # exponent helps, so each is written to its own precision, "5.00 ± 1.0e-07".
        return number(mean, digits), number(error, 2)
    scale = 10.0**exponent
    inner_mean, inner_error = _rounded_together(mean / scale, error / scale, decimals)
    return f"{inner_mean}e{exponent}", f"{inner_error}e{exponent}"


def _rounded_together(mean: float, error: float, decimals: int) -> tuple[str, str]:
    """Mean and error to ``decimals`` decimal places (to a power of ten when not positive)."""
    if decimals <= 0:
        step = 10 ** (-decimals)
        return f"{round(mean / step) * step:.0f}", f"{round(error / step) * step:.0f}"
    return f"{mean:.{decimals}f}", f"{error:.{decimals}f}"


def column_texts(pairs: Sequence[tuple[float | None, float | None] | None],
                 digits: int = 3) -> list[tuple[str, str | None] | None]:
    """``value_and_error`` of each (mean, error) of one table column (None, no value, stays None), in
    one notation for the column: plain where every cell reads plain; else one exponent for the
    column, its largest value's. Cell by cell, a column of times read ``0.01637 ± 0.00011`` beside
    ``1.48776e-2 ± 0.00027e-2``; now ``1.637e-2 ± 0.011e-2`` beside it. Each cell keeps its own
    digits: two of its error (or ``digits`` of a value alone), as ``value_and_error`` rounds them.
    In a column of exponents, a value more than 100 times below the largest takes its own
    (``1.2e-6``, not ``0.000012e-1``), as does one whose digits would run past six decimals at the
    column's exponent (in a plain column, a value 1e7 times below the largest: the one mix left)."""
    texts = [None if pair is None else value_and_error(*pair, digits) for pair in pairs]
    if all(text is None or not any("e" in part for part in text if part) for text in texts):
        return texts
    places = [None if pair is None else _places(*pair, digits) for pair in pairs]
    exponents = [math.floor(math.log10(abs(rounded))) for rounded, _ in filter(None, places) if rounded]
    if not exponents:
        return texts
    column = max(exponents)
    out = []
    for pair, text, place in zip(pairs, texts, places):
        if place is None:  # n/a, or a bare 0: the same in any notation
            out.append(text)
            continue
        own = math.floor(math.log10(abs(place[0]))) if place[0] else column
        # "0.000012e-1" reads worse than "1.2e-6"; at exponent 0 (plain) "0.000400" is the column's.
        shared = [column] if column == 0 or column - own <= 2 else []
        at = next((e for e in (*shared, own) if place[1] + e <= 6), None)
        out.append(text if at is None else _at_exponent(*pair, text[1], place[1] + at, at))
    return out


def _at_exponent(mean: float, error: float | None, error_text: str | None, decimals: int,
                 exponent: int) -> tuple[str, str | None]:
    """A cell's mean (and error) as mantissas of ``10**exponent`` to ``decimals`` places."""
    scale, mark = 10.0 ** exponent, f"e{exponent}" if exponent else ""
    if error_text is None or error_text == "0":  # a value alone (or repeats equal but for float sums)
        places = max(0, decimals)
        return f"{round(mean / scale, places):.{places}f}{mark}", error_text
    value, err = _rounded_together(mean / scale, error / scale, decimals)
    return value + mark, err + mark


def _places(mean: float | None, error: float | None, digits: int) -> tuple[float, int] | None:
    """A cell's mean as ``value_and_error`` rounds it and the decimal places that carries (two
    significant digits of the error, or ``digits`` of a value alone); None where it has no number
    (n/a) or is a bare 0."""
    if mean is None or not math.isfinite(mean):
        return None
    if error is None or not math.isfinite(error) or error <= abs(mean) * NOISE:
        if mean == 0:
            return None
        rounded = float(f"{mean:.{digits - 1}e}")
        return rounded, digits - 1 - math.floor(math.log10(abs(rounded)))
    decimals = 1 - math.floor(math.log10(abs(error)))
    return round(mean, decimals), decimals


def plus_minus(mean: float | None, error: float | None, sign: str = " ± ", digits: int = 3) -> str:
    value, err = value_and_error(mean, error, digits)
    return value if err is None else f"{value}{sign}{err}"


def csv_number(value: object) -> object:
    """Floats at 12 significant digits (a float's last digits are noise, not data); the rest as is."""
    if isinstance(value, float):  # no number (NaN, or an edited record's ratio that overflows): empty, as JSON's null
        return "" if not math.isfinite(value) else format(value, ".12g")
    return "" if value is None else value


def printable(text: str) -> str:
    """A name as one line of text: as is, or quoted with its control characters escaped (a run
    id with a newline, written by another tool, would break a heading or a listing)."""
    return text if one_line(text) else repr(text)


def cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(marks) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines)


def rank_ranges(ranks: Iterable[int]) -> str:
    """``[1, 2, 3, 5]`` as ``1-3, 5``: a reason every rank of 512 gave is one short line."""
    ranges: list[list[int]] = []
    for rank in sorted(ranks):
        if ranges and rank == ranges[-1][1] + 1:
            ranges[-1][1] = rank
        else:
            ranges.append([rank, rank])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def energy_text(mean: float, se: float | None = None) -> str:
    """kWh in a readable unit: ``18.5 mWh``, ``1.2 ± 0.1 kWh``."""
    unit, factor = pick_unit([mean], ENERGY_UNITS)
    return plus_minus(mean * factor, None if se is None else se * factor) + f" {unit}"


def mass_text(mean: float, se: float | None = None) -> str:
    """gCO2eq in a readable unit: ``7.06 mgCO2eq``."""
    unit, factor = pick_unit([mean], MASS_UNITS)
    return plus_minus(mean * factor, None if se is None else se * factor) + f" {unit}CO2eq"


def joule_text(mean: float, se: float | None = None) -> str:
    """J in a readable unit: ``812 µJ``, ``0.81 ± 0.02 J`` (a cost per token or per sample)."""
    unit, factor = pick_unit([mean], JOULE_UNITS)
    return plus_minus(mean * factor, None if se is None else se * factor) + f" {unit}"


def count_text(mean: float, se: float | None = None) -> str:
    """A large count in a readable unit: ``1.23 M``, ``12.3 ± 0.4 k``, ``512``."""
    unit, factor = pick_unit([mean], COUNT_UNITS)
    if not unit and se is None and float(mean).is_integer():
        return str(int(mean))  # one run's count, a mean of one: "42", not "42.0" as three digits made it
    return plus_minus(mean * factor, None if se is None else se * factor) + (f" {unit}" if unit else "")


def intensity_text(g_per_kwh: float) -> str:
    """An intensity in gCO2eq/kWh as a sentence cites it: whole grams from 10 up (``56``), two
    significant digits below (``2.4``, ``0.40``): whole grams said "0 gCO2eq/kWh" of a grid given as
    0.4 beside the emissions it priced, and "2" of 2.4 (a clean grid, 17 % off)."""
    return f"{g_per_kwh:.0f}" if abs(g_per_kwh) >= 9.5 else number(g_per_kwh, 2)


def pue_text(pue: float, source: str) -> str:
    """``1.2, <where it comes from>``: the PUE and its source, in a sentence."""
    # Sources may begin with the value itself ("1.0: IT energy only ..."): say it once.
    source = re.sub(r"^\s*\d+(\.\d+)?\s*:\s*", "", source or "")
    return f"{pue:g}" + (f", {source}" if source else "")


# The non-ASCII characters the output uses, as a stream that cannot encode them writes them; any
# other character loses its accents (Zürich: Zurich), and what has no ASCII form is escaped (\u2603).
PLAIN = {"±": "+/-", "µ": "u", "μ": "u", "→": "->", "×": "x", "–": "-", "—": "-", "®": "(R)", "\u200b": ""}
PLAIN_ERRORS = "greencallbacks.plain"


def _plain(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = []
    for char in error.object[error.start:error.end]:
        plain = PLAIN.get(char)
        if plain is None:
            plain = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode("ascii")
            plain = plain or char.encode("ascii", "backslashreplace").decode("ascii")
        out.append(plain)
    return "".join(out), error.end


codecs.register_error(PLAIN_ERRORS, _plain)


@contextmanager
def plain_where_needed(stream: object) -> Iterator[None]:
    """Within it, what ``stream``'s encoding cannot write is written plain ("±" as "+/-"); its
    error handling is put back after. A stream that encodes it all and is strict about the rest,
    or is no text file, is left as is. A strict UTF-8 stream (a UTF-8 locale) cannot write a lone
    surrogate either, which a run id made from a file name that is not UTF-8 holds: the report
    failed with "'utf-8' codec can't encode character '\\udcff'"; it is written escaped."""
    encoding, errors = getattr(stream, "encoding", None), getattr(stream, "errors", None)
    reconfigure = getattr(stream, "reconfigure", None)
    try:
        needed = (bool(encoding) and callable(reconfigure) and errors != PLAIN_ERRORS
                  and (errors == "strict" or not _encodes(encoding, PLAIN)))
        if needed:
            reconfigure(errors=PLAIN_ERRORS)
    except (OSError, ValueError):  # a closed stream, or one that cannot be changed: left as is
        needed = False
    try:
        yield
    finally:
        if needed:
            try:
                reconfigure(errors=errors)
            except (OSError, ValueError):
                pass


def _encodes(encoding: str, chars: Iterable[str]) -> bool:
    try:
        "".join(chars).encode(encoding)
    except UnicodeEncodeError:
        return False
    except LookupError:  # an encoding Python does not know: nothing to do about it here
        return True
    return True
