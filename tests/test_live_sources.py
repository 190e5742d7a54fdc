"""Live intensity sources against a local HTTP server on 127.0.0.1: the real client code, no internet."""

import base64
import json
import threading
import urllib.parse
from datetime import datetime, timezone

import pytest

from tests.fakes.loopback import LoopbackServer, QuietHandler

from greencallbacks.carbon import Carbon
from greencallbacks.carbon.intensity import country_intensity, world_average
from greencallbacks.carbon.live import (
    LB_PER_MWH_TO_G_PER_KWH,
    WAIT_AT_BOUNDARY_S,
    ElectricityMapsSource,
    UkCarbonIntensitySource,
    WattTimeSource,
)

TOKEN = "em-secret-token-7f3a9c"
PASSWORD = "wt-secret-password-41d2"
# 2024-05-01 10:00 UTC: a whole hour, so the hourly steps are easy to compute by hand.
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc).timestamp()


HANG = True  # a route's third item: no answer until the test ends


def iso(unix_s):
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeApi:
    """A local server whose answers the test scripts: ``routes[path] = (status, body)``, or
    ``(status, body, HANG)`` to answer only when the test ends (after the client gave up)."""

    def __init__(self):
        self.routes = {}
        self.requests = []  # (path, query dict, headers dict)
        self.released = threading.Event()  # set at close: a hanging answer goes out then
        self.busy = threading.Semaphore(0)  # one release per finished request, so close can wait for them
        api = self

        class Handler(QuietHandler):
            def do_GET(self):
                try:
                    self.answer()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    api.busy.release()

            def answer(self):
                parsed = urllib.parse.urlparse(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}  # HTTP names are case-blind
                api.requests.append((parsed.path, dict(urllib.parse.parse_qsl(parsed.query)), headers))
                route = next((v for k, v in api.routes.items() if parsed.path.startswith(k)), (404, "not found"))
                status, body, hang = route if len(route) == 3 else (*route, False)
                if callable(body):
                    status, body = body(parsed, headers)
                if hang:
                    api.released.wait()
                payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
                payload = payload.encode() if isinstance(payload, str) else payload
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = LoopbackServer(Handler)
        self.url = self._server.url

    def close(self):
        self.released.set()
        for _ in self.requests:  # each request's thread has finished: none outlives the test
            self.busy.acquire(timeout=10)
        self._server.close()


@pytest.fixture
def api(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    server = FakeApi()
    yield server
    server.close()


def em_history(values_by_hour):
    return {"zone": "DE", "history": [
        {"zone": "DE", "carbonIntensity": value, "datetime": iso(T0 + hour * 3600), "isEstimated": False,
         "emissionFactorType": "lifecycle"}
        for hour, value in values_by_hour
    ]}


def em_source(api, **options):
    # The clock says "now" is just after the data, so the /history endpoint is the one used.
    return ElectricityMapsSource("DE", token=TOKEN, base_url=api.url + "/v3", clock=lambda: T0 + 3 * 3600, **options)


# -------------------------------------------------------------------------------- Electricity Maps
def test_electricitymaps_time_weighted_mean_over_hourly_steps(api):
    api.routes["/v3/carbon-intensity/history"] = (200, em_history([(0, 300), (1, 100), (2, 200)]))
    source = em_source(api, bucket_s=3600)
    # 30 min at 300, then 30 min at 100.
    intensity = source.mean_between(T0 + 1800, T0 + 5400)
    assert intensity.g_per_kwh == pytest.approx(200.0)
    assert "Electricity Maps DE" in intensity.source and "fallback" not in intensity.source
    assert source.mean_between(T0 + 7300, T0 + 7300).g_per_kwh == 200.0
    path, query, headers = api.requests[0]
    assert query == {"zone": "DE"}
    assert headers.get("auth-token") == TOKEN  # sent as a header, never in the URL


def test_electricitymaps_plugs_into_carbon(api):
    api.routes["/v3/carbon-intensity/history"] = (200, em_history([(0, 250)]))
    carbon = Carbon(series=em_source(api))
    assert carbon.intensity_between(T0, T0 + 60).g_per_kwh == pytest.approx(250.0)


def test_electricitymaps_past_range_for_old_intervals(api):
    api.routes["/v3/carbon-intensity/past-range"] = (200, {"zone": "DE", "data": [
        {"carbonIntensity": 410, "datetime": iso(T0)}]})
    source = ElectricityMapsSource("DE", token=TOKEN, base_url=api.url + "/v3", clock=lambda: T0 + 10 * 86400)
    assert source.mean_between(T0, T0 + 600).g_per_kwh == 410
    path, query, _ = api.requests[0]
    assert path == "/v3/carbon-intensity/past-range" and query["zone"] == "DE" and "start" in query and "end" in query


def test_one_request_per_bucket_however_many_phases(api):
    api.routes["/v3/carbon-intensity/history"] = (200, em_history([(0, 300), (1, 100)]))
    source = em_source(api, bucket_s=900)
    for minute in range(0, 15):  # fifteen one-minute phases inside one 15-minute bucket
        source.mean_between(T0 + minute * 60, T0 + minute * 60 + 60)
    assert len(api.requests) == 1
    source.mean_between(T0 + 900, T0 + 1000)  # the next bucket
    assert len(api.requests) == 2
    source.mean_between(T0 + 100, T0 + 1100)  # spans both: both cached
    assert len(api.requests) == 2 and source.requests_made == 2


def test_no_request_at_construction_or_without_use(api):
    em_source(api)
    UkCarbonIntensitySource(base_url=api.url)
    WattTimeSource("CAISO_NORTH", username="u", password=PASSWORD, base_url=api.url)
    assert api.requests == []


def test_timeout_falls_back_to_static_table_and_says_so(api):
    api.routes["/v3/carbon-intensity/history"] = (200, em_history([(0, 300)]), HANG)  # answers after the test
    source = em_source(api, timeout_s=0.2)
    with pytest.warns(Warning, match="failed"):
        intensity = source.mean_between(T0, T0 + 60)
    germany = country_intensity("DE")
    assert intensity.g_per_kwh == pytest.approx(germany.g_per_kwh)
    assert "fallback: static table" in intensity.source and "because: timeout after 0.2 s" in intensity.source
    # The failure is cached too: a second phase in the same bucket does not wait again, and says the same.
    again = source.mean_between(T0 + 60, T0 + 120)
    assert "because: timeout" in again.source and len(api.requests) == 1


@pytest.mark.parametrize("status", [401, 500])
def test_http_errors_fall_back_and_are_recorded(api, status):
    api.routes["/v3/carbon-intensity/history"] = (status, {"error": "nope"})
    with pytest.warns(Warning):
        intensity = em_source(api).mean_between(T0, T0 + 60)
    assert intensity.g_per_kwh == pytest.approx(country_intensity("DE").g_per_kwh)
    assert f"because: HTTP {status}" in intensity.source


@pytest.mark.parametrize("body", ["{not json", json.dumps({"zone": "DE"}), json.dumps({"history": [{"datetime": "x"}]}),
                                  json.dumps({"history": [{"datetime": iso(T0), "carbonIntensity": "lots"}]}),
                                  json.dumps({"history": []})])
def test_malformed_answers_fall_back(api, body):
    api.routes["/v3/carbon-intensity/history"] = (200, body)
    with pytest.warns(Warning):
        intensity = em_source(api).mean_between(T0, T0 + 60)
    assert "fallback: static table" in intensity.source
    assert intensity.g_per_kwh == pytest.approx(country_intensity("DE").g_per_kwh)


def test_partial_fallback_weights_each_bucket(api):
    calls = []

    def flaky(parsed, headers):
        calls.append(1)
        return (200, em_history([(0, 100)])) if len(calls) == 1 else (500, "boom")

    api.routes["/v3/carbon-intensity/history"] = (200, flaky)
    source = em_source(api, bucket_s=900)
    source.mean_between(T0, T0 + 10)  # bucket 0 from the API
    with pytest.warns(Warning):
        intensity = source.mean_between(T0, T0 + 1800)  # bucket 1 fails
    expected = (100 + country_intensity("DE").g_per_kwh) / 2
    assert intensity.g_per_kwh == pytest.approx(expected)
    assert "for 1 of 2 buckets" in intensity.source


def test_missing_token_falls_back_without_request(api, monkeypatch):
    monkeypatch.delenv("ELECTRICITYMAPS_TOKEN", raising=False)
    source = ElectricityMapsSource("FR", base_url=api.url + "/v3")
    with pytest.warns(Warning):
        intensity = source.mean_between(T0, T0 + 60)
    assert "no token" in intensity.source and "ELECTRICITYMAPS_TOKEN" in intensity.source
    assert intensity.g_per_kwh == pytest.approx(country_intensity("FR").g_per_kwh)
    assert api.requests == []


def test_token_from_named_environment_variable(api, monkeypatch):
    monkeypatch.setenv("MY_EM_KEY", TOKEN)
    api.routes["/v3/carbon-intensity/history"] = (200, em_history([(0, 123)]))
    source = ElectricityMapsSource("DE", token_env="MY_EM_KEY", base_url=api.url + "/v3", clock=lambda: T0)
    assert source.mean_between(T0, T0 + 1).g_per_kwh == 123
    assert api.requests[0][2]["auth-token"] == TOKEN


def test_unknown_zone_falls_back_to_world_average(api):
    api.routes["/v3/carbon-intensity/history"] = (500, "down")
    source = ElectricityMapsSource("XX-NOWHERE", token=TOKEN, base_url=api.url + "/v3", clock=lambda: T0)
    with pytest.warns(Warning):
        assert source.mean_between(T0, T0 + 1).g_per_kwh == pytest.approx(world_average(is_default=False).g_per_kwh)


def test_token_never_leaks(api, recwarn):
    def echo_token(parsed, headers):
        # A hostile or buggy server that puts the token in its error.
        return 401, f"bad token {headers.get('auth-token')}"

    api.routes["/v3/carbon-intensity/history"] = (401, echo_token)
    source = em_source(api)
    intensity = source.mean_between(T0, T0 + 60)
    texts = [intensity.source, repr(intensity), repr(source), str(Carbon(series=source).describe()),
             *(str(w.message) for w in recwarn)]
    assert not any(TOKEN in text for text in texts)
    with pytest.raises(ValueError) as raised:
        ElectricityMapsSource("DE", token="")
    assert TOKEN not in str(raised.value)


# ------------------------------------------------------------------------------ UK Carbon Intensity
def uk_periods(values, key="actual"):
    return [{"from": iso(T0 + i * 1800)[:16] + "Z", "to": iso(T0 + (i + 1) * 1800)[:16] + "Z",
             "intensity": {"forecast": value + 1000 if key == "actual" else value, key: value, "index": "moderate"}}
            for i, value in enumerate(values)]


def test_uk_national_uses_actual_and_half_hour_steps(api):
    api.routes["/intensity/"] = (200, {"data": uk_periods([200, 100])})
    source = UkCarbonIntensitySource(base_url=api.url, bucket_s=3600)
    assert source.mean_between(T0 + 900, T0 + 2700).g_per_kwh == pytest.approx(150.0)
    path = api.requests[0][0]
    assert path.startswith("/intensity/2024-05-01T09:30Z/")  # half an hour before the bucket
    assert "UK Carbon Intensity GB" in source.mean_between(T0, T0).source


def test_uk_forecast_when_actual_missing(api):
    periods = uk_periods([180])
    periods[0]["intensity"]["actual"] = None
    periods[0]["intensity"]["forecast"] = 170
    api.routes["/intensity/"] = (200, {"data": periods})
    assert UkCarbonIntensitySource(base_url=api.url).mean_between(T0, T0 + 60).g_per_kwh == 170


def test_uk_regional_by_id_and_postcode(api):
    regional = {"data": {"regionid": 13, "dnoregion": "SSE South", "shortname": "South England",
                         "data": uk_periods([90, 110], key="forecast")}}
    api.routes["/regional/intensity/"] = (200, regional)
    by_id = UkCarbonIntensitySource(region=13, base_url=api.url, bucket_s=3600)
    assert by_id.mean_between(T0, T0 + 3600).g_per_kwh == pytest.approx(100.0)
    assert api.requests[-1][0].endswith("/regionid/13")
    by_postcode = UkCarbonIntensitySource(region="RG10", base_url=api.url)
    assert by_postcode.mean_between(T0, T0 + 60).g_per_kwh == 90
    assert api.requests[-1][0].endswith("/postcode/RG10")


def test_uk_failure_falls_back_to_great_britain(api):
    api.routes["/intensity/"] = (500, "down")
    with pytest.warns(Warning):
        intensity = UkCarbonIntensitySource(base_url=api.url).mean_between(T0, T0 + 60)
    assert intensity.g_per_kwh == pytest.approx(country_intensity("GB").g_per_kwh)
    assert "because: HTTP 500" in intensity.source


# ----------------------------------------------------------------------------------------- WattTime
def watttime_api(api, logins, expire_first_token=False):
    def login(parsed, headers):
        expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
        if headers.get("authorization") != expected:
            return 403, "bad credentials"
        logins.append(1)
        return 200, {"token": f"wt-session-token-{len(logins)}"}

    def historical(parsed, headers):
        if expire_first_token and headers.get("authorization") == "Bearer wt-session-token-1":
            return 401, "expired"
        return 200, {"data": [{"point_time": iso(T0), "value": 1000.0}, {"point_time": iso(T0 + 300), "value": 500.0}],
                     "meta": {"region": "CAISO_NORTH", "signal_type": "co2_moer", "units": "lbs_co2_per_mwh",
                              "data_point_period_seconds": 300}}

    api.routes["/login"] = (200, login)
    api.routes["/v3/historical"] = (200, historical)


def test_watttime_login_then_historical_converted_to_g_per_kwh(api):
    logins = []
    watttime_api(api, logins)
    source = WattTimeSource("CAISO_NORTH", username="user", password=PASSWORD, base_url=api.url)
    intensity = source.mean_between(T0, T0 + 600)
    assert intensity.g_per_kwh == pytest.approx(750.0 * LB_PER_MWH_TO_G_PER_KWH)
    assert LB_PER_MWH_TO_G_PER_KWH == pytest.approx(0.45359237)
    assert len(logins) == 1
    _, query, headers = api.requests[-1]
    assert query["region"] == "CAISO_NORTH" and query["signal_type"] == "co2_moer"
    assert headers["authorization"] == "Bearer wt-session-token-1"


def test_watttime_logs_in_again_when_the_token_expires(api):
    logins = []
    watttime_api(api, logins, expire_first_token=True)
    source = WattTimeSource("CAISO_NORTH", username="user", password=PASSWORD, base_url=api.url)
    assert source.mean_between(T0, T0 + 60).g_per_kwh == pytest.approx(1000 * LB_PER_MWH_TO_G_PER_KWH)
    assert len(logins) == 2


def test_watttime_credentials_from_env_and_never_leaked(api, monkeypatch, recwarn):
    monkeypatch.setenv("WATTTIME_USERNAME", "user")
    monkeypatch.setenv("WATTTIME_PASSWORD", "wrong-" + PASSWORD)
    watttime_api(api, [])
    source = WattTimeSource("CAISO_NORTH", base_url=api.url, fallback_zone="US-CA")
    intensity = source.mean_between(T0, T0 + 60)
    assert "because: HTTP 403" in intensity.source
    texts = [intensity.source, repr(source), *(str(w.message) for w in recwarn)]
    assert not any(PASSWORD in text for text in texts)
    basic = base64.b64encode(f"user:wrong-{PASSWORD}".encode()).decode()
    assert not any(basic in text for text in texts)


def test_watttime_unknown_units_fall_back(api):
    api.routes["/login"] = (200, {"token": "wt-session-token"})
    api.routes["/v3/historical"] = (200, {"data": [{"point_time": iso(T0), "value": 3}], "meta": {"units": "percent"}})
    source = WattTimeSource("CAISO_NORTH", username="user", password=PASSWORD, base_url=api.url)
    with pytest.warns(Warning):
        intensity = source.mean_between(T0, T0 + 60)
    assert "unknown units" in intensity.source
    assert intensity.g_per_kwh == pytest.approx(world_average(is_default=False).g_per_kwh)


def test_argument_validation():
    with pytest.raises(ValueError, match="zone"):
        ElectricityMapsSource("", token=TOKEN)
    with pytest.raises(ValueError, match="timeout_s"):
        UkCarbonIntensitySource(timeout_s=0)
    with pytest.raises(ValueError, match="bucket_s"):
        UkCarbonIntensitySource(bucket_s=-1)
    with pytest.raises(ValueError, match="base_url"):
        UkCarbonIntensitySource(base_url="ftp://x")
    with pytest.raises(ValueError, match="region"):
        WattTimeSource(" ")


# ------------------------------------------------------------------------- malformed HTTP answers
class RawAnswers(QuietHandler):
    """Answers that http.client itself refuses, with errors that are not OSErrors."""

    kind = "badstatus"

    def do_GET(self):
        try:
            if self.kind == "badstatus":
                self.wfile.write(b"GARBAGE\r\n\r\n")
            elif self.kind == "incomplete":
                self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"data":')
            else:  # a header line past http.client's 64 KiB limit
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up reading, as it should


@pytest.mark.parametrize("kind, error", [("badstatus", "BadStatusLine"), ("incomplete", "IncompleteRead"),
                                         ("linetoolong", "LineTooLong")])
def test_a_malformed_http_answer_falls_back_like_a_timeout(monkeypatch, kind, error):
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    server = LoopbackServer(type("Answers", (RawAnswers,), {"kind": kind}))
    try:
        source = UkCarbonIntensitySource(base_url=server.url, bucket_s=60.0, timeout_s=2.0)
        carbon = Carbon(series=source)
        with pytest.warns(Warning) as caught:
            first = carbon.intensity_between(T0, T0 + 30)
            second = carbon.intensity_between(T0 + 60, T0 + 90)  # another bucket, another failure
    finally:
        server.close()
    for intensity in (first, second):
        assert intensity.g_per_kwh == pytest.approx(country_intensity("GB").g_per_kwh)
        assert "fallback: static table" in intensity.source and f"malformed HTTP answer from UK Carbon Intensity: {error}" in intensity.source
        assert "\n" not in intensity.source and "\r" not in intensity.source
    assert len([w for w in caught if str(w.message).startswith("greencallbacks: live carbon intensity")]) == 1
    assert source.requests_made == 2


def test_an_unforeseen_error_while_parsing_falls_back(api, monkeypatch):
    from greencallbacks.carbon import live

    def broken(document):
        raise TypeError("unhashable answer")

    monkeypatch.setattr(live, "parse_uk_carbon_intensity", broken)
    api.routes["/intensity/"] = (200, {"data": []})
    with pytest.warns(Warning, match="greencallbacks: live carbon intensity"):
        intensity = UkCarbonIntensitySource(base_url=api.url).mean_between(T0, T0 + 60)
    assert intensity.g_per_kwh == pytest.approx(country_intensity("GB").g_per_kwh)
    assert "because: unexpected TypeError: unhashable answer" in intensity.source


def test_a_live_source_that_raises_through_carbon_falls_back_to_its_own_zone_without_secrets():
    class Broken(ElectricityMapsSource):
        def mean_between(self, start_unix, end_unix):
            raise RuntimeError(f"bug near token {TOKEN}")

    with pytest.warns(Warning, match="greencallbacks: the intensity series Electricity Maps DE failed") as caught:
        intensity = Carbon(series=Broken("DE", token=TOKEN)).intensity_between(T0, T0 + 60)
    assert intensity.g_per_kwh == pytest.approx(country_intensity("DE").g_per_kwh)
    assert "fallback: static table" in intensity.source and "RuntimeError" in intensity.source
    assert not any(TOKEN in text for text in [intensity.source, *(str(w.message) for w in caught)])


def _join_requests():
    for thread in threading.enumerate():
        if thread.name == "greencallbacks-live-intensity":
            thread.join(10)


def test_a_slow_answer_does_not_hold_the_boundary_and_prices_the_rest_of_its_bucket(api):
    """The request ran on the caller's thread (the training thread, inside a hook) for up to
    timeout_s at the first boundary of every bucket: 5 s each 15 minutes with an API down."""
    api.routes["/v3/carbon-intensity/history"] = (200, em_history([(0, 300)]), HANG)
    source = em_source(api, timeout_s=30.0)
    with pytest.warns(Warning, match="no answer within"):
        first = source.mean_between(T0, T0 + 60)  # the answer comes only when released below
    assert first.g_per_kwh == pytest.approx(country_intensity("DE").g_per_kwh)
    assert f"because: no answer within {WAIT_AT_BOUNDARY_S:g} s" in first.source
    api.released.set()
    _join_requests()
    later = source.mean_between(T0 + 60, T0 + 120)  # the same bucket: its answer, asked once
    assert later.g_per_kwh == pytest.approx(300) and "live API" in later.source and "fallback" not in later.source
    assert len(api.requests) == 1


class Trickle(QuietHandler):
    """A valid answer sent a byte at a time, for longer than the client's timeout."""

    def do_GET(self):
        body = json.dumps({"data": [{"intensity": {"actual": 200}}] * 20}).encode()
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode())
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                threading.Event().wait(0.02)  # 20 ms a byte: well within each read's timeout
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


def test_an_answer_sent_slowly_is_cut_off_at_the_timeout(monkeypatch):
    """timeout_s bounded each socket read, not the request: a server sending a byte a second
    held it as long as it sent (20 s with a 5 s timeout), and its answer was then taken as live."""
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    server = LoopbackServer(Trickle)
    try:
        source = UkCarbonIntensitySource(base_url=server.url, bucket_s=60.0, timeout_s=0.2)
        with pytest.warns(Warning, match="timeout after 0.2 s"):
            intensity = source.mean_between(T0, T0 + 30)
    finally:
        _join_requests()
        server.close()
    assert "fallback: static table" in intensity.source and "because: timeout after 0.2 s" in intensity.source


@pytest.mark.parametrize(
    "zone, fallback",
    [("US-NY-NYIS", "US-NY"), ("US-CAL-CISO", "US-CA"), ("US-TEX-ERCO", "US-TX"), ("US-FLA-FPL", "US-FL"),
     ("US-NE-ISNE", "USA"),  # New England, not Nebraska (NE)
     ("US-MIDA-PJM", "USA")],  # thirteen states: the national row
)
def test_an_offline_us_zone_falls_back_to_its_state_when_it_lies_in_one(api, monkeypatch, zone, fallback):
    """US-NY-NYIS fell back to the national (life-cycle) value though the table has New York."""
    from greencallbacks.carbon.intensity import zone_intensity

    monkeypatch.delenv("ELECTRICITYMAPS_TOKEN", raising=False)
    source = ElectricityMapsSource(zone, base_url=api.url + "/v3")
    with pytest.warns(Warning):
        intensity = source.mean_between(T0, T0 + 60)
    expected = zone_intensity(fallback)
    assert intensity.g_per_kwh == pytest.approx(expected.g_per_kwh)
    assert f", {fallback}; " in intensity.source and api.requests == []
