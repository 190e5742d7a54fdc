"""Static carbon-intensity sources: a number, a country, a US state, a cloud region, the world average.

Every lookup returns an :class:`Intensity` that says where its number came from. Unknown names
raise ``ValueError`` naming the argument and the closest known names; nothing is guessed.
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass
from functools import lru_cache

from greencallbacks.carbon import tables
from greencallbacks.checks import as_float, shown

WORLD_AVERAGE_ZONE = "world"
USER_ZONE = "user"

# The largest annual grid average in the tables is ~1,300 g/kWh (oil/coal-only grids); 2,000 leaves
# room for hourly peaks while catching unit mistakes (lb/MWh, g/MWh).
MAX_INTENSITY_G_PER_KWH = 2000.0

CLOUD_PROVIDERS = ("aws", "azure", "gcp")

# eGRID subregion acronyms. The shipped tables have no subregion values (no registry package
# carries them), so these are only recognised to give a useful error.
EGRID_SUBREGIONS = frozenset({
    "AKGD", "AKMS", "AZNM", "CAMX", "ERCT", "FRCC", "HIMS", "HIOA", "MROE", "MROW", "NEWE",
    "NWPP", "NYCW", "NYLI", "NYUP", "PRMS", "RFCE", "RFCM", "RFCW", "RMPA", "SPNO", "SPSO",
    "SRMV", "SRMW", "SRSO", "SRTV", "SRVC",
})


@dataclass(frozen=True)
class Intensity:
    """A carbon intensity in gCO2eq/kWh, and where it came from."""

    g_per_kwh: float
    source: str
    zone: str
    year: int | None
    licence: str
    is_default: bool = False


def validate_intensity(value: object, argument: str = "intensity") -> float:
    """``value`` as a float in [0, 2000] gCO2eq/kWh, else ``ValueError`` naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{argument} must be a number of gCO2eq/kWh, got {value!r}")
    number = as_float(value)
    if not math.isfinite(number) or number < 0 or number > MAX_INTENSITY_G_PER_KWH:
        raise ValueError(
            f"{argument} must be a finite number of gCO2eq/kWh between 0 and {MAX_INTENSITY_G_PER_KWH:g}, "
            f"got {shown(value)}"
        )
    return number


def user_intensity(value: object) -> Intensity:
    g_per_kwh = validate_intensity(value)
    return Intensity(g_per_kwh=g_per_kwh, source="user-supplied intensity", zone=USER_ZONE, year=None, licence="user")


def world_average(*, is_default: bool) -> Intensity:
    row = tables.world()
    label = "world average (no location configured)" if is_default else "world average"
    return Intensity(
        g_per_kwh=row.g_per_kwh,
        source=f"{label}: {row.source} {row.year}",
        zone=WORLD_AVERAGE_ZONE,
        year=row.year,
        licence=row.licence,
        is_default=is_default,
    )


def _from_grid_row(row: tables.GridRow) -> Intensity:
    return Intensity(
        g_per_kwh=row.g_per_kwh,
        source=f"{row.source} {row.year}, {row.zone}",
        zone=row.zone,
        year=row.year,
        licence=row.licence,
    )


@lru_cache(maxsize=None)
def _country_index() -> dict[str, tables.CountryRow]:
    """Upper-cased alpha-2, alpha-3, name and aliases -> row."""
    index: dict[str, tables.CountryRow] = {}
    for row in tables.countries():
        for key in (row.zone, row.alpha2, row.name, *row.aliases):
            index.setdefault(key.upper(), row)
    return index


@lru_cache(maxsize=None)
def _state_index() -> dict[str, tables.GridRow]:
    return {row.zone.upper(): row for row in tables.us_states()}


@lru_cache(maxsize=None)
def _region_index() -> dict[str, tables.CloudRegionRow]:
    return {row.key.lower(): row for row in tables.cloud_regions()}


def _close_matches_message(argument: str, given: str, candidates: list[str]) -> str:
    upper_to_candidate = {candidate.upper(): candidate for candidate in candidates}
    close = difflib.get_close_matches(given.upper(), list(upper_to_candidate), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(upper_to_candidate[match]) for match in close)}?" if close else ""
    return f"unknown {argument} {given!r}{hint} (greencallbacks.carbon.list_zones() lists them all)"


def _country_candidates() -> list[str]:
    return [name for row in tables.countries() for name in (row.zone, row.alpha2, row.name)]


def country_intensity(country: str) -> Intensity:
    """A country by ISO alpha-2, alpha-3 (any case) or name."""
    row = _country_index().get(country.strip().upper())
    if row is None:
        raise ValueError(_close_matches_message("country", country, _country_candidates()))
    return _from_grid_row(row)


def zone_intensity(zone: str) -> Intensity:
    """A US state (``US-CA``), a country code or name, or ``world``."""
    key = zone.strip().upper()
    if key == WORLD_AVERAGE_ZONE.upper():
        return world_average(is_default=False)
    state = _state_index().get(key)
    if state is not None:
        return _from_grid_row(state)
    country = _country_index().get(key)
    if country is not None:
        return _from_grid_row(country)
    if key in EGRID_SUBREGIONS:
        raise ValueError(
            f"zone {zone!r} is an eGRID subregion, and no subregion table is shipped yet; use the US state "
            f"(e.g. zone='US-CA') or pass the subregion's eGRID value as intensity=..."
        )
    candidates = [row.zone for row in tables.us_states()] + _country_candidates()
    raise ValueError(_close_matches_message("zone", zone, candidates))


def check_provider(provider: object) -> str:
    """``provider`` as its key in ``CLOUD_PROVIDERS``, else ``ValueError`` naming it and the valid ones."""
    if not isinstance(provider, str):
        raise ValueError(f"provider must be one of {', '.join(CLOUD_PROVIDERS)} (a string), got {provider!r}")
    key = provider.strip().lower()
    if key not in CLOUD_PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(CLOUD_PROVIDERS)}")
    return key


def split_region(region: str, provider: str | None = None) -> str:
    """The canonical ``provider:region`` key for ``region``, from either form of input."""
    provider_key = None if provider is None else check_provider(provider)
    text = region.strip().lower()
    if ":" in text:
        prefix, _, name = text.partition(":")
        if provider_key is not None and provider_key != prefix:
            raise ValueError(f"region {region!r} conflicts with provider {provider!r}")
        return f"{prefix}:{name}"
    if provider_key is not None:
        return f"{provider_key}:{text}"
    # A bare region name is accepted only when exactly one provider has it.
    owners = [key for key in _region_index() if key.split(":", 1)[1] == text]
    if len(owners) == 1:
        return owners[0]
    return text


def region_row(region: str, provider: str | None = None) -> tables.CloudRegionRow:
    key = split_region(region, provider)
    row = _region_index().get(key)
    if row is None:
        raise ValueError(_close_matches_message("region", region, [row.key for row in tables.cloud_regions()]))
    return row


def region_intensity(region: str, provider: str | None = None) -> Intensity:
    """A cloud region: Google's own figure for GCP, the grid of its location for AWS and Azure."""
    row = region_row(region, provider)
    if row.g_per_kwh is not None:
        return Intensity(
            g_per_kwh=row.g_per_kwh,
            source=f"{row.source} {row.year}, {row.key} ({row.location})",
            zone=row.key,
            year=row.year,
            licence=row.licence,
        )
    grid = zone_intensity(row.zone)
    return Intensity(
        g_per_kwh=grid.g_per_kwh,
        source=f"{row.key} ({row.location}) -> grid of {row.zone}: {grid.source}",
        zone=row.key,
        year=grid.year,
        licence=grid.licence,
    )


def list_zones() -> list[str]:
    """Every name the static sources accept: world, countries (alpha-3), US states, cloud regions."""
    return (
        [WORLD_AVERAGE_ZONE]
        + sorted(row.zone for row in tables.countries())
        + sorted(row.zone for row in tables.us_states())
        + sorted(row.key for row in tables.cloud_regions())
    )
