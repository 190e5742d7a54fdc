"""Opt-in live carbon intensity from web APIs: Electricity Maps, UK Carbon Intensity, WattTime.

Each source has ``mean_between(start_unix, end_unix) -> Intensity``, so it plugs into
``Carbon(series=source)`` and the tracker bills every segment at the intensity of its time.

Nothing here touches the network at import or construction. A request is made the first time an
interval falls in a time bucket (default 15 minutes), on a thread of its own that the caller (the
training thread, at a boundary) waits for ``WAIT_AT_BOUNDARY_S`` at most, and its answer, or its
failure, is cached for that bucket: a run with many short phases makes at most one request per bucket. When a request
fails (timeout, HTTP error, malformed answer) the static table value for the zone's US state or
country (or the world average) is used instead, and the ``Intensity.source`` of every affected result says
so and why. Secrets (tokens, passwords) are sent in headers only and are redacted from every
text this module produces: sources, warnings and exceptions.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import numbers
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Callable

from greencallbacks.carbon.intensity import (
    MAX_INTENSITY_G_PER_KWH,
    Intensity,
    country_intensity,
    validate_intensity,
    world_average,
    zone_intensity,
)
from greencallbacks.carbon.series import parse_timestamp

DEFAULT_TIMEOUT_S = 5.0
# The longest a boundary waits for a bucket's answer; the request goes on, on a thread of its own,
# and the later intervals of the bucket use its answer. A slow API stalled each hook for up to
# timeout_s at every bucket (5 s every 15 minutes); a server sending slowly, for as long as it sent.
WAIT_AT_BOUNDARY_S = 0.5
DEFAULT_BUCKET_S = 900.0  # 15 minutes: finer than the hourly / half-hourly data of the providers
REDACTED = "***"
MIN_SECRET_LENGTH = 4
LB_PER_MWH_TO_G_PER_KWH = 0.45359237  # 1 lb = 453.59237 g, 1 MWh = 1000 kWh

# (unix seconds, gCO2eq/kWh) step points, each holding until the next one.
Points = list[tuple[float, float]]


class LiveSourceError(Exception):
    """A provider did not give a usable answer; the message is safe to show (secrets redacted)."""


def _iso_minutes(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _iso_seconds(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Electricity Maps names US zones US-<region>-<balancing authority>. A region that lies in one state
# falls back to that state's row; the others span several states (US-NE is New England, not
# Nebraska; US-MIDA-PJM, all or part of thirteen states) and fall back to the national row. Alaska's
# and Hawaii's zones (US-AK-SEAPA, US-HI-OA for Oahu) are their states' own grids: Hawaii's oil-fired
# 633 g/kWh, not the national 369.
_US_REGION_STATES = {"AK": "US-AK", "CAL": "US-CA", "FLA": "US-FL", "HI": "US-HI", "NY": "US-NY", "TEX": "US-TX"}


def static_fallback(zone: str | None) -> Intensity:
    """The static table value for a provider zone (``DE``, ``US-CAL-CISO``, ``GB``): the zone itself,
    else its US state (``US-NY-NYIS``: ``US-NY``), else its country, else the world average."""
    if zone:
        parts = zone.upper().split("-")
        state = _US_REGION_STATES.get(parts[1], "") if len(parts) > 2 and parts[0] == "US" else ""
        for candidate in (zone, state, zone.split("-")[0], zone.split("_")[0]):
            if not candidate:
                continue
            try:
                if "-" in candidate:
                    return zone_intensity(candidate)
                return country_intensity(candidate)
            except ValueError:
                continue
    return world_average(is_default=False)


class LiveIntensitySource:
    """The shared machinery: bucketed cache, timeouts, fallback, redaction. Subclasses fetch."""

    provider = "live"
    licence = "provider terms of use"

    def __init__(
        self,
        *,
        zone_label: str,
        base_url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        bucket_s: float = DEFAULT_BUCKET_S,
        fallback: Intensity | None = None,
        fallback_zone: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not (isinstance(timeout_s, numbers.Real) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not (isinstance(bucket_s, numbers.Real) and math.isfinite(bucket_s) and bucket_s > 0):
            raise ValueError(f"bucket_s must be a positive number of seconds, got {bucket_s!r}")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.zone_label = zone_label
        self.base_url = base_url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.bucket_s = float(bucket_s)
        self._fallback = fallback
        self._fallback_zone = fallback_zone
        self._clock = clock
        self._cache: dict[int, Points | str] = {}  # bucket index -> points, or the failure reason
        self._requests: dict[int, threading.Thread] = {}  # bucket index -> its request, while in flight
        self._lock = threading.Lock()
        self.requests_made = 0
        self._warned = False

    # ---------------------------------------------------------------- what subclasses provide
    def _secrets(self) -> list[str]:
        return []

    def _fetch_points(self, start_unix: float, end_unix: float) -> Points:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ public
    @property
    def name(self) -> str:
        return f"{self.provider} {self.zone_label}"

    @property
    def zone(self) -> str:
        return f"{self.provider.lower().replace(' ', '')}:{self.zone_label}"

    def fallback_intensity(self) -> Intensity:
        if self._fallback is None:
            self._fallback = static_fallback(self._fallback_zone)
        return self._fallback

    def mean_between(self, start_unix: float, end_unix: float) -> Intensity:
        if end_unix < start_unix:
            raise ValueError(f"end ({end_unix}) is before start ({start_unix})")
        first, last = self._bucket(start_unix), self._bucket(end_unix)
        if end_unix > start_unix and end_unix == last * self.bucket_s:
            last -= 1  # an interval ending exactly on a bucket edge does not need the next bucket
        weighted_sum = 0.0
        failures: list[str] = []
        years: set[int] = set()
        for bucket in range(first, last + 1):
            left = max(start_unix, bucket * self.bucket_s)
            right = min(end_unix, (bucket + 1) * self.bucket_s)
            answer = self._points_for(bucket)
            if isinstance(answer, str):
                failures.append(answer)
                value = self.fallback_intensity().g_per_kwh
                weighted_sum += value * (right - left) if end_unix > start_unix else value
            else:
                weighted_sum += _step_integral(answer, left, right) if end_unix > start_unix else _step_value(answer, left)
                years.add(datetime.fromtimestamp(left, tz=timezone.utc).year)
        g_per_kwh = weighted_sum / (end_unix - start_unix) if end_unix > start_unix else weighted_sum
        return self._intensity(g_per_kwh, start_unix, end_unix, failures, last - first + 1)

    def await_answer(self, moment_unix: float) -> bool:
        """Wait for the answer to the request still on its way for ``moment``'s bucket, up to twice
        ``timeout_s`` (its connection and its body's deadline); True where one was on its way. For a
        caller about to idle on what the fallback said (a carbon-aware pause), never a boundary's:
        an API slower than ``WAIT_AT_BOUNDARY_S`` paused training on the static table's value."""
        bucket = self._bucket(moment_unix)
        with self._lock:
            request = None if bucket in self._cache else self._requests.get(bucket)
        if request is None:
            return False
        request.join(2 * self.timeout_s)
        return True

    def __repr__(self) -> str:
        # Never the secrets: only what identifies the source.
        return f"{type(self).__name__}(zone={self.zone_label!r}, base_url={self.base_url!r})"

    # ---------------------------------------------------------------------------- internals
    def _bucket(self, moment_unix: float) -> int:
        return math.floor(moment_unix / self.bucket_s)

    def _points_for(self, bucket: int) -> Points | str:
        """The bucket's points, or why there are none: asked once, on a thread of its own, and waited
        for at most ``WAIT_AT_BOUNDARY_S`` (the caller is the training thread, at a boundary)."""
        with self._lock:
            request = None if bucket in self._cache else self._requests.get(bucket)
            if bucket not in self._cache and request is None:
                request = self._requests[bucket] = threading.Thread(
                    target=self._fetch_into_cache, args=(bucket,), name="greencallbacks-live-intensity", daemon=True)
                request.start()
        if request is not None:
            request.join(WAIT_AT_BOUNDARY_S)
        answer = self._cache.get(bucket, f"no answer within {WAIT_AT_BOUNDARY_S:g} s (asked; later intervals of this "
                                         "bucket use the answer)")
        if isinstance(answer, str):
            self._warn_once(answer)  # here: a warning belongs to the thread that trains
        return answer

    def _fetch_into_cache(self, bucket: int) -> None:
        bucket_start = bucket * self.bucket_s
        try:
            points = self._fetch_points(bucket_start, bucket_start + self.bucket_s)
            if not points:
                raise LiveSourceError("no data points for the interval")
            answer: Points | str = sorted(points)
        except Exception as error:  # any failure, ours or unforeseen, is a fallback: never a lost record
            answer = self._redact(str(error) if isinstance(error, LiveSourceError) else f"unexpected {_error_text(error)}")
        with self._lock:
            self._cache[bucket] = answer
            self._requests.pop(bucket, None)

    def _intensity(self, g_per_kwh: float, start_unix: float, end_unix: float, failures: list[str], buckets: int) -> Intensity:
        how = "value at instant" if end_unix == start_unix else "time-weighted mean"
        if not failures:
            return Intensity(
                g_per_kwh=g_per_kwh,
                source=f"{self.name} (live API), {how}",
                zone=self.zone,
                year=datetime.fromtimestamp(start_unix, tz=timezone.utc).year,
                licence=self.licence,
            )
        static = self.fallback_intensity()
        share = "" if len(failures) == buckets else f" for {len(failures)} of {buckets} buckets"
        reasons = "; ".join(dict.fromkeys(failures))  # unique, in order
        return Intensity(
            g_per_kwh=g_per_kwh,
            source=f"{self.name} (live API) fallback: static table{share} ({static.source}), because: {reasons}",
            zone=self.zone,
            year=static.year,
            licence=static.licence if len(failures) == buckets else f"{self.licence}; {static.licence}",
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            # A secret of a few characters would mangle ordinary words and protects nothing.
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                text = text.replace(secret, REDACTED)
        return text

    def _warn_once(self, reason: str) -> None:
        if self._warned:
            return
        self._warned = True
        from greencallbacks.meter import warn

        warn(
            f"greencallbacks: live carbon intensity from {self.name} failed ({reason}); using the static table "
            f"value {self.fallback_intensity().g_per_kwh:g} g/kWh for the affected intervals, and every record says so."
        )

    def _get_json(self, path: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> object:
        """GET ``base_url + path`` and parse JSON; any failure becomes a redacted ``LiveSourceError``."""
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
        self.requests_made += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = _read_within(response, time.monotonic() + self.timeout_s)
        except urllib.error.HTTPError as error:
            raise LiveSourceError(self._redact(f"HTTP {error.code} {error.reason} from {self.provider}")) from None
        except (TimeoutError, socket.timeout):
            raise LiveSourceError(f"timeout after {self.timeout_s:g} s") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise LiveSourceError(f"timeout after {self.timeout_s:g} s") from None
            raise LiveSourceError(self._redact(f"cannot reach {self.provider}: {error.reason}")) from None
        except OSError as error:
            raise LiveSourceError(self._redact(f"connection to {self.provider} failed: {error}")) from None
        except Exception as error:
            # http.client's own errors (a garbled status line, a body cut short, an overlong header)
            # are not OSErrors.
            raise LiveSourceError(self._redact(f"malformed HTTP answer from {self.provider}: {_error_text(error)}")) from None
        try:
            return json.loads(body.decode("utf-8"))
        except Exception as error:  # bad bytes, bad JSON, nesting too deep to parse
            raise LiveSourceError(self._redact(f"malformed JSON from {self.provider}: {_error_text(error)}")) from None


def _read_within(response, deadline: float) -> bytes:
    """The whole body by ``deadline``: ``timeout_s`` bounds each socket read, so a server sending a
    byte a second held the request for as long as it sent (20 s with a 5 s timeout)."""
    chunks = []
    while chunk := response.read1(65536):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError
    body = b"".join(chunks)
    if getattr(response, "length", None):  # read1 ends quietly where read() says the body was cut short
        raise http.client.IncompleteRead(body, response.length)
    return body


def _error_text(error: BaseException) -> str:
    """``Type: message`` on one line (a status line quoted in the message brings its CR LF)."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def _step_value(points: Points, moment_unix: float) -> float:
    """The value in force at ``moment``; before the first point, the first value."""
    value = points[0][1]
    for time_unix, point_value in points:
        if time_unix > moment_unix:
            break
        value = point_value
    return value


def _step_integral(points: Points, start_unix: float, end_unix: float) -> float:
    edges = [start_unix, *(t for t, _ in points if start_unix < t < end_unix), end_unix]
    return sum(_step_value(points, left) * (right - left) for left, right in zip(edges, edges[1:]))


def _checked_value(raw: object, what: str) -> float:
    try:
        return validate_intensity(raw, argument=what)
    except ValueError as error:
        raise LiveSourceError(f"malformed answer: {error}") from None


def _require(condition: bool, why: str) -> None:
    if not condition:
        raise LiveSourceError(f"malformed answer: {why}")


def _secret_from(value: str | None, env_var: str, what: str) -> str | None:
    if value is not None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{what} must be a non-empty string")  # never echo the value
        return value
    return os.environ.get(env_var, "").strip() or None


# ------------------------------------------------------------------------------ Electricity Maps
class ElectricityMapsSource(LiveIntensitySource):
    """Electricity Maps v3 (``auth-token`` header): ``/carbon-intensity/history`` for the last 24 h,
    ``/carbon-intensity/past-range`` before that. Life-cycle gCO2eq/kWh, hourly.

    ``token``: the API token, else the environment variable ``token_env`` (default
    ``ELECTRICITYMAPS_TOKEN``). Without a token every interval falls back to the static table.
    """

    provider = "Electricity Maps"
    licence = "Electricity Maps API terms"
    HISTORY_SPAN_S = 24 * 3600.0

    def __init__(
        self,
        zone: str,
        token: str | None = None,
        *,
        token_env: str = "ELECTRICITYMAPS_TOKEN",
        base_url: str = "https://api.electricitymap.org/v3",
        **options,
    ) -> None:
        if not isinstance(zone, str) or not zone.strip():
            raise ValueError(f"zone must be a non-empty string such as 'DE' or 'US-CAL-CISO', got {zone!r}")
        super().__init__(zone_label=zone.strip(), base_url=base_url, fallback_zone=zone.strip(), **options)
        self._token = _secret_from(token, token_env, "token")
        self._token_env = token_env

    def _secrets(self) -> list[str]:
        return [self._token] if self._token else []

    def _fetch_points(self, start_unix: float, end_unix: float) -> Points:
        if not self._token:
            raise LiveSourceError(f"no token (pass token= or set {self._token_env})")
        headers = {"auth-token": self._token}
        now = self._clock() if self._clock is not None else datetime.now(timezone.utc).timestamp()
        if end_unix >= now - self.HISTORY_SPAN_S:
            document = self._get_json("/carbon-intensity/history", {"zone": self.zone_label}, headers)
            key = "history"
        else:
            # An hour before the bucket so the step in force at its start is included.
            params = {"zone": self.zone_label, "start": _iso_seconds(start_unix - 3600), "end": _iso_seconds(end_unix)}
            document = self._get_json("/carbon-intensity/past-range", params, headers)
            key = "data"
        return parse_electricitymaps(document, key)


def parse_electricitymaps(document: object, key: str = "history") -> Points:
    """Points from a ``history`` / ``data`` list, or from a single ``/latest`` object."""
    _require(isinstance(document, dict), f"expected a JSON object, got {type(document).__name__}")
    assert isinstance(document, dict)
    items = document.get(key, document.get("data", document.get("history")))
    if items is None and "carbonIntensity" in document:
        items = [document]
    _require(isinstance(items, list), f"no '{key}' list")
    points = []
    for item in items:  # type: ignore[union-attr]
        _require(isinstance(item, dict) and "datetime" in item, f"entry without datetime: {item!r}")
        if item.get("carbonIntensity") is None:
            continue  # an hour the provider has no value for
        try:
            moment = parse_timestamp(item["datetime"])
        except ValueError as error:
            raise LiveSourceError(f"malformed answer: {error}") from None
        points.append((moment, _checked_value(item["carbonIntensity"], "carbonIntensity")))
    return points


# ------------------------------------------------------------------------ UK Carbon Intensity
class UkCarbonIntensitySource(LiveIntensitySource):
    """National Grid ESO's Carbon Intensity API for Great Britain (no key), half-hourly.

    ``region``: None for national data (``/intensity/{from}/{to}``, actual where published, else
    forecast); a region id (1-17) for ``/regional/intensity/{from}/{to}/regionid/{id}``; or an
    outward postcode (``RG10``) for ``.../postcode/{postcode}`` (regional data is forecast only).
    """

    provider = "UK Carbon Intensity"
    licence = "CC-BY-4.0 (National Grid ESO Carbon Intensity API)"
    PERIOD_S = 1800.0

    def __init__(self, region: int | str | None = None, *, base_url: str = "https://api.carbonintensity.org.uk", **options) -> None:
        if isinstance(region, bool) or not (region is None or isinstance(region, (int, str))):
            raise ValueError(f"region must be None, a region id (1-17) or a postcode, got {region!r}")
        if isinstance(region, str):
            region = region.strip()
            if region.isdigit():
                region = int(region)
            elif not region:
                raise ValueError("region must not be empty")
        self.region = region
        label = "GB" if region is None else f"GB region {region}"
        super().__init__(zone_label=label, base_url=base_url, fallback_zone="GB", **options)

    def _fetch_points(self, start_unix: float, end_unix: float) -> Points:
        # From half an hour earlier, so the period in force at the bucket's start is included.
        span = f"{_iso_minutes(start_unix - self.PERIOD_S)}/{_iso_minutes(end_unix)}"
        if self.region is None:
            path = f"/intensity/{span}"
        elif isinstance(self.region, int):
            path = f"/regional/intensity/{span}/regionid/{self.region}"
        else:
            path = f"/regional/intensity/{span}/postcode/{urllib.parse.quote(self.region)}"
        return parse_uk_carbon_intensity(self._get_json(path))


def parse_uk_carbon_intensity(document: object) -> Points:
    """Points from a national (``data: [...]``) or regional (``data: {..., data: [...]}``) answer."""
    _require(isinstance(document, dict) and "data" in document, "no 'data' field")
    data = document["data"]  # type: ignore[index]
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) and "regionid" in data[0]:
        data = data[0]  # some regional endpoints wrap the region in a one-element list
    if isinstance(data, dict):
        data = data.get("data")
    _require(isinstance(data, list), "'data' is not a list of periods")
    points = []
    for period in data:
        _require(isinstance(period, dict) and "from" in period and isinstance(period.get("intensity"), dict),
                 f"period without 'from' and 'intensity': {period!r}")
        intensity = period["intensity"]
        value = intensity.get("actual")
        if value is None:
            value = intensity.get("forecast")
        if value is None:
            continue
        try:
            moment = parse_timestamp(period["from"])
        except ValueError as error:
            raise LiveSourceError(f"malformed answer: {error}") from None
        points.append((moment, _checked_value(value, "intensity")))
    return points


# ------------------------------------------------------------------------------------ WattTime
class WattTimeSource(LiveIntensitySource):
    """WattTime v3: ``/login`` (HTTP basic) for a bearer token, then ``/v3/historical``.

    The default signal ``co2_moer`` is the *marginal* operating emission rate, which answers "what
    would one more kWh now emit", not the grid average; ``signal_type="co2_aoer"`` gives the
    average where the plan allows it. Values in lbs/MWh are converted to g/kWh.
    ``username`` / ``password``: else the environment variables ``WATTTIME_USERNAME`` /
    ``WATTTIME_PASSWORD`` (names can be changed). ``fallback_zone``: the country or US state whose
    static value replaces failed requests (default: the world average, since WattTime regions
    are balancing authorities, not countries).
    """

    provider = "WattTime"
    licence = "WattTime API terms"
    SPAN_BEFORE_S = 3600.0

    def __init__(
        self,
        region: str,
        *,
        username: str | None = None,
        password: str | None = None,
        username_env: str = "WATTTIME_USERNAME",
        password_env: str = "WATTTIME_PASSWORD",
        signal_type: str = "co2_moer",
        base_url: str = "https://api.watttime.org",
        fallback_zone: str | None = None,
        **options,
    ) -> None:
        if not isinstance(region, str) or not region.strip():
            raise ValueError(f"region must be a WattTime region such as 'CAISO_NORTH', got {region!r}")
        super().__init__(zone_label=region.strip(), base_url=base_url, fallback_zone=fallback_zone, **options)
        self._username = _secret_from(username, username_env, "username")
        self._password = _secret_from(password, password_env, "password")
        self._credential_envs = f"{username_env} / {password_env}"
        self.signal_type = signal_type
        self._token: str | None = None

    def _secrets(self) -> list[str]:
        return [s for s in (self._password, self._token, self._basic_auth()) if s]

    def _basic_auth(self) -> str | None:
        if not (self._username and self._password):
            return None
        return base64.b64encode(f"{self._username}:{self._password}".encode()).decode("ascii")

    def _login(self) -> str:
        basic = self._basic_auth()
        if basic is None:
            raise LiveSourceError(f"no credentials (pass username= and password= or set {self._credential_envs})")
        document = self._get_json("/login", headers={"Authorization": f"Basic {basic}"})
        token = document.get("token") if isinstance(document, dict) else None
        _require(isinstance(token, str) and bool(token), "login answer has no token")
        return token  # type: ignore[return-value]

    def _fetch_points(self, start_unix: float, end_unix: float) -> Points:
        params = {
            "region": self.zone_label,
            "start": _iso_seconds(start_unix - self.SPAN_BEFORE_S),
            "end": _iso_seconds(end_unix),
            "signal_type": self.signal_type,
        }
        for attempt in range(2):
            if self._token is None:
                self._token = self._login()
            try:
                document = self._get_json("/v3/historical", params, {"Authorization": f"Bearer {self._token}"})
                return parse_watttime(document)
            except LiveSourceError as error:
                # Tokens expire after about 30 minutes: log in again once.
                if attempt == 0 and str(error).startswith("HTTP 401"):
                    self._token = None
                    continue
                raise
        raise LiveSourceError("unreachable")  # pragma: no cover


WATTTIME_UNITS = {"lbs_co2_per_mwh": LB_PER_MWH_TO_G_PER_KWH, "kg_co2_per_mwh": 1.0, "g_co2_per_kwh": 1.0}


def watttime_g_per_kwh(value: float, units: str, written: object = None) -> float:
    """``value`` in WattTime's ``units`` (a key of ``WATTTIME_UNITS``) as gCO2eq/kWh. One out of
    range is said as ``written`` (default: ``value``) in its own unit: -1 lbs_co2_per_mwh, not the
    -0.4536 g/kWh it became."""
    factor = WATTTIME_UNITS[units]
    try:
        return validate_intensity(value * factor, argument="value")
    except ValueError:
        raise ValueError(f"value must be a finite number of {units} between 0 and "
                         f"{MAX_INTENSITY_G_PER_KWH / factor:.6g} ({MAX_INTENSITY_G_PER_KWH:g} gCO2eq/kWh), "
                         f"got {value if written is None else written!r}") from None


def parse_watttime(document: object) -> Points:
    """Points from ``{"data": [{"point_time", "value"}], "meta": {"units"}}``, in g/kWh."""
    _require(isinstance(document, dict) and isinstance(document.get("data"), list), "no 'data' list")
    assert isinstance(document, dict)
    meta = document.get("meta") if isinstance(document.get("meta"), dict) else {}
    units = str(meta.get("units", "lbs_co2_per_mwh")).lower()  # type: ignore[union-attr]
    _require(units in WATTTIME_UNITS, f"unknown units {units!r}")
    points = []
    for item in document["data"]:
        _require(isinstance(item, dict) and "point_time" in item and "value" in item, f"entry without point_time/value: {item!r}")
        if item["value"] is None:
            continue
        raw = item["value"]
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise LiveSourceError(f"malformed answer: value {raw!r} is not a number")
        try:
            moment = parse_timestamp(item["point_time"])
        except ValueError as error:
            raise LiveSourceError(f"malformed answer: {error}") from None
        try:
            points.append((moment, watttime_g_per_kwh(raw, units)))
        except ValueError as error:
            raise LiveSourceError(f"malformed answer: {error}") from None
    return points
