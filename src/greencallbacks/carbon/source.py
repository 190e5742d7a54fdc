"""``Carbon``: the one object the tracker asks for gCO2eq/kWh and PUE."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from greencallbacks.carbon.intensity import (
    Intensity,
    country_intensity,
    region_intensity,
    region_row,
    user_intensity,
    world_average,
    zone_intensity,
)
from greencallbacks.carbon.pue import Pue, it_only_pue, provider_pue, user_pue
from greencallbacks.carbon.series import IntensitySeries, IntensitySource

ENV_PREFIX = "GREENCALLBACKS_"


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
        if provider is not None and region is None:
            raise ValueError("provider needs region (e.g. provider='aws', region='us-east-1')")

        self._static: Intensity | None = None
        self._series: IntensitySource | None = None
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
        """Intensity for the interval [start, end] (unix seconds): the constant, or the series' mean."""
        if not (math.isfinite(start_unix) and math.isfinite(end_unix)):
            raise ValueError(f"interval bounds must be finite, got [{start_unix}, {end_unix}]")
        if end_unix < start_unix:
            raise ValueError(f"end ({end_unix}) is before start ({start_unix})")
        if self._static is not None:
            return self._static
        assert self._series is not None
        return self._series.mean_between(start_unix, end_unix)

    def describe(self) -> dict:
        """JSON-friendly summary: zone, g_per_kwh (None for a series), source, year, licence, PUE."""
        if self._static is not None:
            static = self._static
            zone, g_per_kwh, source, year, licence = static.zone, static.g_per_kwh, static.source, static.year, static.licence
        else:
            zone = getattr(self._series, "zone", f"series:{type(self._series).__name__}")
            g_per_kwh, year = None, None
            source = f"time series {getattr(self._series, 'name', zone)}"
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


def _series_source(series: object) -> IntensitySource:
    if isinstance(series, (str, os.PathLike)):
        return IntensitySeries.from_file(Path(series))
    if callable(getattr(series, "mean_between", None)):
        return series  # type: ignore[return-value]
    raise ValueError(
        f"series must be a path to a CSV/JSON file or an object with mean_between(start, end), got {series!r}"
    )
