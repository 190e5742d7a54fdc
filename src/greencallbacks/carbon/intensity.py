"""Static carbon-intensity sources: a number, a country, a US state, a cloud region, the world average.

Every lookup returns an :class:`Intensity` that says where its number came from and what it counts
(its ``basis``: life-cycle or direct emissions; the tables mix both, see ``data/SOURCES.md``).
Names are matched in any case, accents and spacing; common names ISO does not list (``UK``,
``Holland``) and US state names (``California``) are accepted. Unknown names raise ``ValueError``
naming the argument and the closest known names, and a name that fits two places (``Korea``,
``Georgia`` as a zone) names both; nothing is guessed.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
import unicodedata
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

# No grid emits less over its life cycle than its cleanest source, onshore wind at 11 g/kWh (the
# IPCC AR5 median that Ember's life-cycle figures use). A life-cycle figure below it is an artefact
# of the source data (the shipped table's 0 for the Central African Republic), which would bill
# every run 0 g: refused, with the fix, rather than used.
LEAST_LIFECYCLE_G_PER_KWH = 11.0

# How a source label says what its figure counts (tables.BASES). The same grid's direct figure is
# lower than its life-cycle one, so the label travels into every record, report and comparison.
BASIS_LABELS = {
    "life-cycle": "life-cycle emissions",
    "direct": "direct (combustion) emissions only",
}

# Common English names that ISO 3166 (the tables' names and aliases) does not list, by alpha-3.
COMMON_COUNTRY_NAMES = {
    "UK": "GBR",  # ISO reserves UK for the United Kingdom; its code is GB
    "Great Britain": "GBR",
    "Britain": "GBR",
    "Holland": "NLD",
    "Ivory Coast": "CIV",
    "UAE": "ARE",
    "Republic of Korea": "KOR",
    # The nations of Great Britain are on its one grid, which the tables have whole (Northern
    # Ireland is on the island of Ireland's grid, so it is not mapped here).
    "England": "GBR",
    "Scotland": "GBR",
    "Wales": "GBR",
    # Former or short names still in common use.
    "Bosnia": "BIH",
    "Macedonia": "MKD",
    "Swaziland": "SWZ",
    "Burma": "MMR",
    "DR Congo": "COD",
    "DRC": "COD",
    "Macau": "MAC",
}
# Names that fit more than one country: refused, naming each (alpha-3 codes).
AMBIGUOUS_COUNTRY_NAMES = {"KOREA": ("KOR", "PRK")}

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
    basis: str | None = None  # "life-cycle" or "direct" (tables.BASES); None when not known


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
        source=f"{label}: {row.source} {row.year}; {BASIS_LABELS[row.basis]}",
        zone=WORLD_AVERAGE_ZONE,
        year=row.year,
        licence=row.licence,
        is_default=is_default,
        basis=row.basis,
    )


def usable(row: tables.GridRow) -> bool:
    """Whether a shipped grid row's figure can be billed (see ``LEAST_LIFECYCLE_G_PER_KWH``)."""
    return not (row.basis == "life-cycle" and row.g_per_kwh < LEAST_LIFECYCLE_G_PER_KWH)


def _from_grid_row(row: tables.GridRow, argument: str, given: str) -> Intensity:
    if not usable(row):
        raise ValueError(
            f"{argument} {given!r}: the shipped table's figure for {row.name} ({row.zone}), {row.g_per_kwh:g} "
            f"gCO2eq/kWh ({row.source} {row.year}), is below what any grid emits over its life cycle "
            f"({LEAST_LIFECYCLE_G_PER_KWH:g} g/kWh, wind's); pass your grid's figure as intensity=... (gCO2eq/kWh)"
        )
    return Intensity(
        g_per_kwh=row.g_per_kwh,
        source=f"{row.source} {row.year}, {row.zone}; {BASIS_LABELS[row.basis]}",
        zone=row.zone,
        year=row.year,
        licence=row.licence,
        basis=row.basis,
    )


def _fold(name: str) -> str:
    """A place name as typed, for lookup: case, accents, spacing and a leading "the" ignored
    ("the netherlands", "Turkiye" for "Türkiye")."""
    text = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    words = text.replace("\u2019", "'").upper().split()
    if len(words) > 1 and words[0] == "THE":
        words = words[1:]
    return " ".join(words)


@lru_cache(maxsize=None)
def _country_index() -> dict[str, tables.CountryRow]:
    """Folded alpha-2, alpha-3, name, aliases and common names -> row."""
    index: dict[str, tables.CountryRow] = {}
    for row in tables.countries():
        for key in (row.zone, row.alpha2, row.name, *row.aliases):
            index.setdefault(_fold(key), row)
    by_alpha3 = {row.zone: row for row in tables.countries()}
    for name, alpha3 in COMMON_COUNTRY_NAMES.items():
        index.setdefault(_fold(name), by_alpha3[alpha3])
    return index


@lru_cache(maxsize=None)
def _state_index() -> dict[str, tables.GridRow]:
    """Folded zone (``US-CA``) and name (``California``) -> row."""
    index = {row.zone.upper(): row for row in tables.us_states()}
    index.update({_fold(row.name): row for row in tables.us_states()})
    return index


@lru_cache(maxsize=None)
def _region_index() -> dict[str, tables.CloudRegionRow]:
    return {row.key.lower(): row for row in tables.cloud_regions()}


def _squash(name: str) -> str:
    """A region name with case, spaces, hyphens and underscores ignored: Azure's display names
    ("West Europe") are its region names ("westeurope") written for people."""
    return re.sub(r"[\s_-]+", "", name.lower())


def _close_matches_message(argument: str, given: str, candidates: list[str]) -> str:
    # Only candidates from half to twice its length: a name is not offered codes ("Kosovo" was
    # offered "SV" and "SO", which share two letters of its six), nor a code long names.
    upper_to_candidate = {candidate.upper(): candidate for candidate in candidates
                          if len(given) / 2 <= len(candidate) <= 2 * len(given)}
    close = difflib.get_close_matches(given.upper(), list(upper_to_candidate), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(upper_to_candidate[match]) for match in close)}?" if close else ""
    return f"unknown {argument} {given!r}{hint} (greencallbacks.carbon.list_zones() lists them all)"


def other_country_names(row: tables.CountryRow) -> list[str]:
    """The names ``country=`` takes for ``row`` beside its own: ISO's aliases and names in common use."""
    return [*row.aliases, *(name for name, alpha3 in COMMON_COUNTRY_NAMES.items() if alpha3 == row.zone)]


def _country_candidates() -> list[str]:
    return [name for row in tables.countries() for name in (row.zone, row.alpha2, row.name, *other_country_names(row))]


def _zone_candidates() -> list[str]:
    return [name for row in tables.us_states() for name in (row.zone, row.name)] + _country_candidates()


def _country_row(argument: str, given: str) -> tables.CountryRow | None:
    """The country ``given`` names, None if none; ``ValueError`` naming ``argument`` if it names several."""
    key = _fold(given)
    if key in AMBIGUOUS_COUNTRY_NAMES:
        rows = [row for row in tables.countries() if row.zone in AMBIGUOUS_COUNTRY_NAMES[key]]
        options = " or ".join(f"{row.name!r} ({row.zone})" for row in rows)
        raise ValueError(f"{argument} {given!r} is ambiguous: {options}; name the one meant")
    return _country_index().get(key)


def country_intensity(country: str) -> Intensity:
    """A country by ISO alpha-2, alpha-3 or name (any case), or a common name (``UK``)."""
    row = _country_row("country", country)
    if row is not None:
        return _from_grid_row(row, "country", country)
    state = _state_index().get(_fold(country))
    if state is not None:  # "California": a zone, not a country
        raise ValueError(f"unknown country {country!r}: it is a US state; give zone={state.zone!r} "
                         f"(greencallbacks.carbon.list_zones() lists them all)")
    raise ValueError(_close_matches_message("country", country, _country_candidates()))


def _known_zone(zone: str) -> Intensity | None:
    """The zone's intensity, None when no zone has the name; ``ValueError`` when it fits two
    (``Georgia``) or is an eGRID subregion."""
    key = _fold(zone)
    if key == WORLD_AVERAGE_ZONE.upper():
        return world_average(is_default=False)
    state = _state_index().get(key)
    country = _country_row("zone", zone)
    if state is not None and country is not None:  # "Georgia"
        raise ValueError(f"zone {zone!r} is ambiguous: the country {country.name!r} ({country.zone}) or the "
                         f"US state {state.name!r} ({state.zone}); give its code")
    if state is not None or country is not None:
        return _from_grid_row(state or country, "zone", zone)  # type: ignore[arg-type]
    if key in EGRID_SUBREGIONS:
        raise ValueError(
            f"zone {zone!r} is an eGRID subregion, and no subregion table is shipped yet; use the US state "
            f"(e.g. zone='US-CA') or pass the subregion's eGRID value as intensity=..."
        )
    return None


def zone_intensity(zone: str) -> Intensity:
    """A US state (``US-CA`` or ``California``), a country code or name, or ``world``."""
    found = _known_zone(zone)
    if found is None:
        raise ValueError(_close_matches_message("zone", zone, _zone_candidates()))
    return found


def check_provider(provider: object) -> str:
    """``provider`` as its key in ``CLOUD_PROVIDERS``, else ``ValueError`` naming it and the valid ones."""
    if not isinstance(provider, str):
        raise ValueError(f"provider must be one of {', '.join(CLOUD_PROVIDERS)} (a string), got {provider!r}")
    key = provider.strip().lower()
    if key not in CLOUD_PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(CLOUD_PROVIDERS)}")
    return key


def _region_key(region: str, provider: str | None = None) -> str | None:
    """The ``provider:region`` key of a shipped region that ``region`` names, None if none.

    The provider's own name is matched first (any case), so ``us-east1`` stays GCP's region; then
    one written with other spaces and hyphens (``West Europe``, ``aws: us-east-1``). A bare name is
    taken when exactly one provider has it; when several do, ``ValueError`` names them.
    """
    provider_key = None if provider is None else check_provider(provider)
    text = region.strip().lower()
    prefix = provider_key
    if ":" in text:
        prefix, _, text = (part.strip() for part in text.partition(":"))
        if provider_key is not None and provider_key != prefix:
            raise ValueError(f"region {region!r} conflicts with provider {provider!r}")
    keys = [key for key in _region_index() if prefix is None or key.split(":", 1)[0] == prefix]
    for same in (lambda name: name == text, lambda name: _squash(name) == _squash(text)):
        found = [key for key in keys if same(key.split(":", 1)[1])]
        if len(found) > 1:
            raise ValueError(f"region {region!r} is ambiguous: {', '.join(map(repr, found))}; name the provider's "
                             f"region as it writes it, or prefix the provider")
        if found:
            return found[0]
    return None


def split_region(region: str, provider: str | None = None) -> str:
    """The canonical ``provider:region`` key for ``region``, from any form of input it accepts."""
    key = _region_key(region, provider)
    if key is None:
        raise ValueError(_close_matches_message("region", region, [row.key for row in tables.cloud_regions()]))
    return key


def region_row(region: str, provider: str | None = None) -> tables.CloudRegionRow:
    return _region_index()[split_region(region, provider)]


def region_intensity(region: str, provider: str | None = None) -> Intensity:
    """A cloud region: Google's own figure for GCP, the grid of its location for AWS and Azure."""
    row = region_row(region, provider)
    if row.g_per_kwh is not None:
        return Intensity(
            g_per_kwh=row.g_per_kwh,
            source=f"{row.source} {row.year}, {row.key} ({row.location}); {BASIS_LABELS[row.basis]}",
            zone=row.key,
            year=row.year,
            licence=row.licence,
            basis=row.basis,
        )
    grid = zone_intensity(row.zone)
    return Intensity(
        g_per_kwh=grid.g_per_kwh,
        source=f"{row.key} ({row.location}) -> grid of {row.zone}: {grid.source}",
        zone=row.key,
        year=grid.year,
        licence=grid.licence,
        basis=grid.basis,
    )


def place_intensity(place: str) -> Intensity:
    """A zone or a cloud region, in any form ``zone=`` or ``region=`` accepts (``FR``, ``US-CA``,
    ``aws:us-east-1``, ``us-east-1``, ``West Europe``): for lists of places to compare."""
    if ":" in place:
        return region_intensity(place)
    found = _known_zone(place)
    if found is not None:
        return found
    key = _region_key(place)  # a name that several providers' regions fit says so
    if key is None:
        candidates = _zone_candidates() + [row.key for row in tables.cloud_regions()]
        raise ValueError(_close_matches_message("zone", place, candidates))
    return region_intensity(key)


def list_zones() -> list[str]:
    """Every name the static sources accept: world, countries (alpha-3), US states, cloud regions."""
    return (
        [WORLD_AVERAGE_ZONE]
        + sorted(row.zone for row in tables.countries() if usable(row))
        + sorted(row.zone for row in tables.us_states() if usable(row))
        + sorted(row.key for row in tables.cloud_regions())
    )
