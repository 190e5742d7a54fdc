"""The carbon tables shipped in ``greencallbacks/data``: loaded on first use with ``csv``, then cached.

Each CSV starts with one ``#`` comment line (what the table is, where it came from) and every row
carries its own ``source``, ``year`` and ``licence``, and a grid row its ``basis`` (``life-cycle`` or
``direct``, see ``BASES``). ``scripts/build_tables.py`` rebuilds them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# A plain folder inside the package (package data), not a package of its own.
DATA_PACKAGE = "greencallbacks"
DATA_FOLDER = "data"

TABLE_FILES = ("grid_countries.csv", "grid_world.csv", "grid_us_states.csv", "cloud_regions.csv", "pue.csv")

# What a grid figure counts: "life-cycle" (Ember: fuel supply chains and plant construction
# included) or "direct" (eGRID, Google: what the plants emit). See data/SOURCES.md.
BASES = ("life-cycle", "direct")


@dataclass(frozen=True)
class GridRow:
    """One location with a known grid intensity."""

    zone: str
    name: str
    g_per_kwh: float
    year: int | None
    source: str
    licence: str
    basis: str  # what the figure counts: "life-cycle" or "direct"


@dataclass(frozen=True)
class CountryRow(GridRow):
    alpha2: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class CloudRegionRow:
    """A cloud region: either its own published intensity (GCP) or the grid zone it sits in."""

    provider: str
    region: str
    location: str
    zone: str
    g_per_kwh: float | None
    year: int | None
    source: str
    licence: str
    basis: str  # of its own figure (GCP); "" when it uses its zone's grid row (AWS, Azure)

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.region}"


@dataclass(frozen=True)
class PueRow:
    key: str
    pue: float
    year: int | None
    source: str
    licence: str


def read_table_text(file_name: str) -> str:
    return resources.files(DATA_PACKAGE).joinpath(DATA_FOLDER).joinpath(file_name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def read_rows(file_name: str) -> tuple[dict[str, str], ...]:
    """The rows of one shipped table as dicts, comment lines skipped."""
    lines = [line for line in read_table_text(file_name).splitlines() if not line.startswith("#")]
    return tuple(csv.DictReader(io.StringIO("\n".join(lines))))


def table_comment(file_name: str) -> str:
    """The table's ``#`` header line, without the ``#``."""
    first_line = read_table_text(file_name).splitlines()[0]
    return first_line.lstrip("#").strip()


def parsed(file_name: str, convert) -> tuple:
    """``convert`` applied to every row of a shipped table; a bad row names the file and the row."""
    rows = read_rows(file_name)
    if not rows:
        raise ValueError(f"shipped table {file_name} has no rows: {_BROKEN_TABLE_FIX}")
    out = []
    for number, row in enumerate(rows, start=1):
        try:
            out.append(convert(row))
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"shipped table {file_name}, data row {number}: {error!r}; {_BROKEN_TABLE_FIX}") from None
    return tuple(out)


_BROKEN_TABLE_FIX = "the installed package is damaged; reinstall greencallbacks (or rebuild it with scripts/build_tables.py)"


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def _optional_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def _basis(text: str, *, optional: bool = False) -> str:
    if text in BASES or (optional and not text):
        return text
    raise ValueError(f"basis must be one of {', '.join(BASES)}, got {text!r}")


def _grid_fields(row: dict[str, str]) -> dict:
    """The columns every grid table shares."""
    return dict(
        g_per_kwh=float(row["g_per_kwh"]),
        year=_optional_int(row["year"]),
        source=row["source"],
        licence=row["licence"],
        basis=_basis(row["basis"]),
    )


@lru_cache(maxsize=None)
def countries() -> tuple[CountryRow, ...]:
    return parsed("grid_countries.csv", lambda row: CountryRow(
        zone=row["alpha3"],
        name=row["name"],
        alpha2=row["alpha2"],
        aliases=tuple(alias for alias in row["aliases"].split("|") if alias),
        **_grid_fields(row),
    ))


@lru_cache(maxsize=None)
def world() -> GridRow:
    return parsed("grid_world.csv", lambda row: GridRow(zone=row["zone"], name="World", **_grid_fields(row)))[0]


@lru_cache(maxsize=None)
def us_states() -> tuple[GridRow, ...]:
    return parsed("grid_us_states.csv", lambda row: GridRow(zone=row["zone"], name=row["name"], **_grid_fields(row)))


@lru_cache(maxsize=None)
def cloud_regions() -> tuple[CloudRegionRow, ...]:
    return parsed("cloud_regions.csv", lambda row:
        CloudRegionRow(
            provider=row["provider"],
            region=row["region"],
            location=row["location"],
            zone=row["zone"],
            g_per_kwh=_optional_float(row["g_per_kwh"]),
            year=_optional_int(row["year"]),
            source=row["source"],
            licence=row["licence"],
            basis=_basis(row["basis"], optional=not row["g_per_kwh"].strip()),
        )
    )


@lru_cache(maxsize=None)
def pue_defaults() -> dict[str, PueRow]:
    rows = parsed("pue.csv", lambda row: PueRow(
        key=row["key"],
        pue=float(row["pue"]),
        year=_optional_int(row["year"]),
        source=row["source"],
        licence=row["licence"],
    ))
    return {row.key: row for row in rows}
