"""``Carbon``: the one object the tracker asks for gCO2eq/kWh and PUE."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import datetime, timezone

from greencallbacks.carbon.intensity import (
    Intensity,
    check_provider,
    country_intensity,
    region_intensity,
    region_row,
    user_intensity,
    validate_intensity,
    world_average,
    zone_intensity,
)
from greencallbacks.carbon.pue import Pue, it_only_pue, provider_pue, user_pue
from greencallbacks.carbon.series import IntensitySeries, IntensitySource
from greencallbacks.checks import keywords_checked

ENV_PREFIX = "GREENCALLBACKS_"


@keywords_checked
class Carbon:
    """Where gCO2eq/kWh comes from, and the PUE to apply. Offline; validated at construction.

    Give at most one location: ``intensity`` (g/kWh), ``country`` (ISO alpha-2/alpha-3 or name),
    ``zone`` (US state ``US-CA``, a country code, ``world``), ``region`` (``aws:us-east-1``,
    ``gcp:europe-west1``, ``azure:westeurope``; or ``provider="aws", region="us-east-1"``) or
    ``series`` (a CSV/JSON file path, or an object with ``mean_between(start, end) -> Intensity``).
    With none, the world average is used and flagged ``is_default``.
    ``pue`` in [1, 3]; default: the provider's fleet PUE for a cloud region, else 1.0 (IT only).
    """

    def __init__(
        self,
        *,
        intensity: float | None = None,
        country: str | None = None,
        zone: str | None = None,
        region: str | None = None,
        series: str | os.PathLike[str] | IntensitySource | None = None,
        pue: float | None = None,
        provider: str | None = None,
    ) -> None:
        given = {
            name: value
            for name, value in (
                ("intensity", intensity), ("country", country), ("zone", zone), ("region", region), ("series", series)
            )
            if value is not None
        }
        if len(given) > 1:
            raise ValueError(f"give at most one carbon location, got {' and '.join(given)}")
        if provider is not None:
            check_provider(provider)  # an unknown one is named as such, with or without a region
            if region is None:
                raise ValueError("provider needs region (e.g. provider='aws', region='us-east-1')")

        self._static: Intensity | None = None
        self._series: IntensitySource | None = None
        self._warned: set[str] = set()  # each problem of the series is warned once per Carbon
        cloud_provider: str | None = None

        if intensity is not None:
            self._static = user_intensity(intensity)
        elif country is not None:
            self._static = country_intensity(_text_argument("country", country))
        elif zone is not None:
            self._static = zone_intensity(_text_argument("zone", zone))
        elif region is not None:
            self._static = region_intensity(_text_argument("region", region), provider)
            cloud_provider = region_row(region, provider).provider
        elif series is not None:
            self._series = _series_source(series)
        else:
            self._static = world_average(is_default=True)

        chosen_pue: Pue
        if pue is not None:
            chosen_pue = user_pue(pue)
        elif cloud_provider is not None:
            chosen_pue = provider_pue(cloud_provider)
        else:
            chosen_pue = it_only_pue()
        self.pue: float = chosen_pue.value
        self.pue_source: str = chosen_pue.source

    @property
    def static_intensity(self) -> Intensity | None:
        """The constant intensity, or None for a time series."""
        return self._static

    @property
    def is_default(self) -> bool:
        return self._static is not None and self._static.is_default

    def intensity_between(self, start_unix: float, end_unix: float) -> Intensity:
        """Intensity for the interval [start, end] (unix seconds): the constant, or the series' mean.

        A series that raises, or answers something other than a valid :class:`Intensity`, is
        replaced for that interval by a static value (its own fallback, else the world average),
        labelled and warned once: the tracker calls this while building records, and a record
        lost to a user's series would lose its energy too.
        """
        if not (math.isfinite(start_unix) and math.isfinite(end_unix)):
            raise ValueError(f"interval bounds must be finite, got [{start_unix}, {end_unix}]")
        if end_unix < start_unix:
            raise ValueError(f"end ({end_unix}) is before start ({start_unix})")
        if self._static is not None:
            return self._static
        assert self._series is not None
        try:
            intensity = _checked(self._series.mean_between(start_unix, end_unix))
        except Exception as error:  # anything from user code: the record must still be written
            return self._series_failed(error)
        self._warn_if_outside_series(start_unix, end_unix)
        self._warn_if_in_a_gap(start_unix, end_unix)
        return intensity

    def await_live_answer(self, moment_unix: float) -> bool:
        """Wait for a live source's answer still on its way for ``moment`` (see
        ``LiveIntensitySource.await_answer``); True where one was. False for any other source."""
        if self._series is None or isinstance(self._series, IntensitySeries):
            return False
        from greencallbacks.carbon.live import LiveIntensitySource  # lazily: it imports urllib

        if not isinstance(self._series, LiveIntensitySource):
            return False
        try:
            return self._series.await_answer(moment_unix)
        except Exception:  # noqa: BLE001 - the pause decides on what it has
            return False

    def _series_name(self, default: str | None = None) -> str:
        default = default or type(self._series).__name__
        try:
            return str(getattr(self._series, "name", None) or default)
        except Exception:  # a user's property that raises
            return default

    def _series_zone(self) -> str:
        try:
            return str(getattr(self._series, "zone", None) or f"series:{type(self._series).__name__}")
        except Exception:
            return f"series:{type(self._series).__name__}"

    def _series_fallback(self) -> Intensity:
        """The series' own static fallback (a live source's country), else the world average."""
        try:
            return _checked(self._series.fallback_intensity())  # type: ignore[union-attr]
        except Exception:
            return world_average(is_default=False)

    def _series_failed(self, error: Exception) -> Intensity:
        from greencallbacks.carbon.live import _error_text  # the failure path only: live imports urllib

        reason = _error_text(error)
        redact = getattr(self._series, "_redact", None)  # a live source's secrets stay out of records
        if callable(redact):
            try:
                reason = str(redact(reason))
            except Exception:
                reason = type(error).__name__
        static = self._series_fallback()
        name = self._series_name()
        if "failed" not in self._warned:
            self._warned.add("failed")
            _warn(
                f"greencallbacks: the intensity series {name} failed ({reason}); using the static value "
                f"{static.g_per_kwh:g} g/kWh ({static.source}) for every interval it cannot price, and each "
                "record says so."
            )
        return Intensity(
            g_per_kwh=static.g_per_kwh,
            source=f"time series {name} failed ({reason}); fallback: static table ({static.source})",
            zone=self._series_zone(),
            year=static.year,
            licence=static.licence,
        )

    def _warn_if_outside_series(self, start_unix: float, end_unix: float) -> None:
        """Warn once when the run reaches outside a file series: that time is priced at its nearest value."""
        series = self._series
        # An instant bills no energy, so its price cannot mislead.
        if "outside" in self._warned or end_unix <= start_unix or not isinstance(series, IntensitySeries):
            return
        covered_from, covered_until = series.coverage
        # Warned at the first interval outside, which is one phase or one logged step of the run
        # (a fraction of a second, often): its span is not the run's. Say from when on the run is
        # outside, which stays true for the rest of the run.
        spans = []
        if start_unix < covered_from:
            spans.append(f"from {_iso(start_unix)} until the series begins (or the run ends), the run is before it "
                         f"and priced at its first value, {series.values_g_per_kwh[0]:g} g/kWh")
        if end_unix > covered_until:
            spans.append(f"from {_iso(max(start_unix, covered_until))} on, the run is after it and priced at its "
                         f"last value, {series.values_g_per_kwh[-1]:g} g/kWh")
        if not spans:
            return
        self._warned.add("outside")
        _warn(
            f"greencallbacks: the intensity series {series.description} covers {_iso(covered_from)} to "
            f"{_iso(covered_until)}, but the run reaches outside it: {'; '.join(spans)}. Any other time outside "
            "it is priced at its nearest value too (data of another time, not of the run), and each record so "
            "priced says 'extrapolated'. Give a series that covers the run."
        )

    def _warn_if_in_a_gap(self, start_unix: float, end_unix: float) -> None:
        """Warn once when the run reaches into a gap of a file series: priced at the value before it."""
        series = self._series
        if "gap" in self._warned or end_unix <= start_unix or not isinstance(series, IntensitySeries):
            return
        gaps = series.gaps_between(start_unix, end_unix)
        if not gaps:
            return
        self._warned.add("gap")
        start, end = gaps[0]
        _warn(
            f"greencallbacks: the intensity series {series.description} has no data from {_iso(start)} to "
            f"{_iso(end)}, and the run reaches into that gap: it is priced at the value before it, "
            f"{series.value_at(start):g} g/kWh{_held_year_note(series, start, start_unix)}. Any other gap "
            "is priced the same way, and each record so priced says 'extrapolated: held over a gap'. Give a "
            "series without gaps over the run."
        )

    def describe(self) -> dict:
        """JSON-friendly summary: zone, g_per_kwh (None for a series), source, year, licence, PUE."""
        if self._static is not None:
            static = self._static
            zone, g_per_kwh, source, year, licence = static.zone, static.g_per_kwh, static.source, static.year, static.licence
        else:
            zone = self._series_zone()
            g_per_kwh, year = None, None
            source = f"time series {self._series_name(default=zone)}"
            licence = "user data"
        return {
            "zone": zone,
            "g_per_kwh": g_per_kwh,
            "source": source,
            "year": year,
            "licence": licence,
            "pue": self.pue,
            "pue_source": self.pue_source,
            "is_default": self.is_default,
        }

    def __repr__(self) -> str:
        summary = self.describe()
        return f"Carbon(zone={summary['zone']!r}, g_per_kwh={summary['g_per_kwh']!r}, pue={self.pue!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Carbon":
        """From GREENCALLBACKS_COUNTRY / _ZONE / _REGION / _INTENSITY / _SERIES / _PUE (empty = unset)."""

        def read(name: str) -> str | None:
            value = environ.get(ENV_PREFIX + name, "").strip()
            return value or None

        return cls(
            intensity=_env_number("INTENSITY", "intensity", read("INTENSITY")),
            country=read("COUNTRY"),
            zone=read("ZONE"),
            region=read("REGION"),
            series=read("SERIES"),
            pue=_env_number("PUE", "pue", read("PUE")),
        )


def _text_argument(argument: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{argument} must be a non-empty string, got {value!r}")
    return value


def _env_number(variable: str, argument: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{argument} from {ENV_PREFIX}{variable} must be a number, got {text!r}") from None


def _checked(intensity: object) -> Intensity:
    """``intensity`` when it is an :class:`Intensity` with a valid value, else ``TypeError``/``ValueError``."""
    if not isinstance(intensity, Intensity):
        raise TypeError(f"mean_between returned {type(intensity).__name__}, not an Intensity")
    validate_intensity(intensity.g_per_kwh, argument="the series' g_per_kwh")
    return intensity


def _held_year_note(series: IntensitySeries, gap_start: float, start_unix: float) -> str:
    """`` (data of 2025, not of the run's year, 2026)`` when the value held over a gap is of another
    year than the run's time in the gap, else "": a value of the run's own year is no news."""
    held = series.data_year(gap_start)
    run = datetime.fromtimestamp(max(start_unix, gap_start), tz=timezone.utc).year
    return f" (data of {held}, not of the run's year, {run})" if held != run else ""


def _iso(unix_s: float) -> str:
    try:
        return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # past the calendar: still say where
        return f"{unix_s:g} (unix seconds)"


def _warn(message: str) -> None:
    from greencallbacks.meter import warn  # lazily: importing the carbon package stays light

    warn(message)


def _series_source(series: object) -> IntensitySource:
    if isinstance(series, (str, os.PathLike)):
        return IntensitySeries.from_file(series)  # as given, to be named as given
    if callable(getattr(series, "mean_between", None)):
        return series  # type: ignore[return-value]
    raise ValueError(
        f"series must be a path to a CSV/JSON file or an object with mean_between(start, end), got {series!r}"
    )
