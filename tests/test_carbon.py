"""Carbon intensity and PUE: shipped tables, lookups, validation, time series, environment."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from greencallbacks.carbon import WORLD_AVERAGE_ZONE, Carbon, Intensity, list_zones
from greencallbacks.carbon import tables
from greencallbacks.carbon.series import IntensitySeries

DATA_DIR = Path(tables.__file__).resolve().parents[1] / "data"


def table_rows(file_name: str) -> list[dict[str, str]]:
    """Read a shipped table independently of the code under test."""
    lines = [line for line in (DATA_DIR / file_name).read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def country_row(alpha3: str) -> dict[str, str]:
    return next(row for row in table_rows("grid_countries.csv") if row["alpha3"] == alpha3)


# --- shipped tables -------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", tables.TABLE_FILES)
def test_every_shipped_table_row_parses_and_has_metadata(file_name: str) -> None:
    text = (DATA_DIR / file_name).read_text(encoding="utf-8")
    first_line = text.splitlines()[0]
    assert first_line.startswith("# "), "each table starts with a provenance comment"
    assert "build_tables.py" in first_line
    rows = table_rows(file_name)
    assert rows, file_name
    for row in rows:
        assert row["source"].strip(), row
        assert row["licence"].strip(), row
        number = row.get("g_per_kwh") or row.get("pue")
        if number:  # AWS/Azure cloud rows have no own value: they resolve through a grid zone
            value = float(number)
            assert math.isfinite(value) and 0 <= value <= 2000, row
        if row.get("year"):
            assert 2000 <= int(row["year"]) <= 2030, row
    assert (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8").count(file_name) >= 1
    assert (DATA_DIR / file_name).stat().st_size < 300_000


def test_every_shipped_row_loads_through_the_table_loader() -> None:
    assert len(tables.countries()) == len(table_rows("grid_countries.csv")) > 200
    assert len(tables.us_states()) == 51
    for row in tables.cloud_regions():
        intensity = Carbon(region=row.key).intensity_between(0, 1)
        assert intensity.zone == row.key
        assert intensity.licence and intensity.source and intensity.year is not None
    assert set(tables.pue_defaults()) == {"industry_average", "gcp", "aws", "azure"}


def test_country_codes_are_unique_and_well_formed() -> None:
    rows = table_rows("grid_countries.csv")
    alpha3 = [row["alpha3"] for row in rows]
    alpha2 = [row["alpha2"] for row in rows]
    assert len(set(alpha3)) == len(alpha3) and len(set(alpha2)) == len(alpha2)
    assert all(len(code) == 3 and code.isupper() for code in alpha3)
    assert all(len(code) == 2 and code.isupper() for code in alpha2)


def test_list_zones_covers_every_kind() -> None:
    zones = list_zones()
    for zone in (WORLD_AVERAGE_ZONE, "FRA", "US-CA", "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"):
        assert zone in zones
    assert len(zones) == len(set(zones))


def test_import_is_light() -> None:
    code = (
        "import sys, greencallbacks.carbon; "
        "heavy = [m for m in ('pandas', 'numpy', 'torch', 'requests', 'urllib.request') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- static lookups -------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["FR", "fr", "FRA", "fra", "France", "france", " FR "])
def test_country_by_alpha2_alpha3_or_name(given: str) -> None:
    expected = country_row("FRA")
    intensity = Carbon(country=given).intensity_between(0, 3600)
    assert isinstance(intensity, Intensity)
    assert intensity.zone == "FRA"
    assert intensity.g_per_kwh == pytest.approx(float(expected["g_per_kwh"]), abs=1e-9)
    assert intensity.year == int(expected["year"])
    assert intensity.licence == "CC-BY-4.0"
    assert "Our World in Data" in intensity.source and "FRA" in intensity.source
    assert intensity.is_default is False


def test_country_values_differ_between_countries() -> None:
    # Guards against every lookup returning one value (e.g. the world average).
    france = Carbon(country="FR").intensity_between(0, 1).g_per_kwh
    poland = Carbon(country="PL").intensity_between(0, 1).g_per_kwh
    assert france == pytest.approx(float(country_row("FRA")["g_per_kwh"]))
    assert poland == pytest.approx(float(country_row("POL")["g_per_kwh"]))
    assert poland > 5 * france


def test_country_accepts_iso_name_alias() -> None:
    assert Carbon(country="United States of America").describe()["zone"] == "USA"
    assert Carbon(country="US").describe()["zone"] == "USA"
    assert Carbon(country="GB").describe()["zone"] == "GBR"


def test_us_state_zone() -> None:
    expected = next(row for row in table_rows("grid_us_states.csv") if row["zone"] == "US-CA")
    intensity = Carbon(zone="US-CA").intensity_between(0, 1)
    assert intensity.zone == "US-CA"
    assert intensity.g_per_kwh == pytest.approx(float(expected["g_per_kwh"]))
    assert intensity.year == 2023
    assert intensity.licence == "public-domain"
    assert "eGRID" in intensity.source
    assert Carbon(zone="us-ca").intensity_between(0, 1) == intensity


def test_us_state_is_converted_from_lb_per_mwh() -> None:
    # eGRID2023 California STC2ERTA is 394.769 lb/MWh; 1 lb/MWh = 0.45359237 g/kWh.
    assert Carbon(zone="US-CA").describe()["g_per_kwh"] == pytest.approx(394.769 * 0.45359237, rel=1e-4)


def test_zone_accepts_country_code_and_world() -> None:
    assert Carbon(zone="DE").describe()["zone"] == "DEU"
    world = Carbon(zone="world").describe()
    assert world["zone"] == WORLD_AVERAGE_ZONE and world["is_default"] is False


def test_egrid_subregion_explains_it_is_not_shipped() -> None:
    with pytest.raises(ValueError, match=r"zone 'CAMX'.*eGRID subregion.*US-CA"):
        Carbon(zone="CAMX")


def test_gcp_region_uses_googles_own_value() -> None:
    expected = next(row for row in table_rows("cloud_regions.csv") if row["provider"] == "gcp" and row["region"] == "europe-west1")
    carbon = Carbon(region="gcp:europe-west1")
    intensity = carbon.intensity_between(0, 1)
    assert intensity.zone == "gcp:europe-west1"
    assert intensity.g_per_kwh == pytest.approx(float(expected["g_per_kwh"]))
    assert intensity.licence == "Apache-2.0"
    assert "Google" in intensity.source
    assert carbon.pue == pytest.approx(1.10)
    assert "Google" in carbon.pue_source


@pytest.mark.parametrize(
    ("region", "grid_kwargs", "pue", "pue_word"),
    [
        ("aws:us-east-1", {"zone": "US-VA"}, 1.15, "AWS"),
        ("aws:eu-west-3", {"country": "FRA"}, 1.15, "AWS"),
        ("azure:westeurope", {"country": "NLD"}, 1.18, "Microsoft"),
        ("azure:westus2", {"zone": "US-WA"}, 1.18, "Microsoft"),
    ],
)
def test_aws_and_azure_regions_use_the_grid_of_their_location(region, grid_kwargs, pue, pue_word) -> None:
    carbon = Carbon(region=region)
    intensity = carbon.intensity_between(0, 1)
    grid = Carbon(**grid_kwargs).intensity_between(0, 1)
    assert intensity.zone == region
    assert intensity.g_per_kwh == grid.g_per_kwh
    assert intensity.licence == grid.licence and intensity.year == grid.year
    assert grid.zone in intensity.source
    assert carbon.pue == pytest.approx(pue)
    assert pue_word in carbon.pue_source


def test_region_forms_are_equivalent() -> None:
    prefixed = Carbon(region="aws:us-east-1").describe()
    assert Carbon(provider="aws", region="us-east-1").describe() == prefixed
    assert Carbon(region="AWS:US-EAST-1").describe() == prefixed
    # A bare name is accepted when only one provider has it.
    assert Carbon(region="westeurope").describe()["zone"] == "azure:westeurope"


def test_region_provider_conflict_and_provider_without_region() -> None:
    with pytest.raises(ValueError, match="provider"):
        Carbon(provider="gcp", region="aws:us-east-1")
    with pytest.raises(ValueError, match="provider"):
        Carbon(provider="aws")
    with pytest.raises(ValueError, match="provider"):
        Carbon(provider="ibm", region="us-south")


def test_user_intensity_and_pue() -> None:
    carbon = Carbon(intensity=123.5, pue=1.3)
    intensity = carbon.intensity_between(10, 20)
    assert intensity.g_per_kwh == 123.5 and intensity.zone == "user" and intensity.year is None
    assert carbon.pue == 1.3 and "user" in carbon.pue_source
    assert Carbon(intensity=0).intensity_between(0, 1).g_per_kwh == 0.0


def test_user_pue_overrides_cloud_default() -> None:
    assert Carbon(region="aws:us-east-1", pue=1.4).pue == 1.4


def test_no_location_is_the_flagged_world_average() -> None:
    expected = table_rows("grid_world.csv")[0]
    carbon = Carbon()
    intensity = carbon.intensity_between(0, 60)
    assert intensity.is_default is True
    assert intensity.zone == WORLD_AVERAGE_ZONE
    assert intensity.g_per_kwh == pytest.approx(float(expected["g_per_kwh"]))
    assert 440 <= intensity.g_per_kwh <= 500  # Ember world average, ~470 g/kWh in 2024
    assert intensity.year == 2024
    assert "world average (no location configured)" in intensity.source
    assert carbon.pue == 1.0 and "IT energy only" in carbon.pue_source
    assert carbon.describe()["is_default"] is True


def test_describe_is_json_friendly() -> None:
    summary = Carbon(country="DE").describe()
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary) == {"zone", "g_per_kwh", "source", "year", "licence", "pue", "pue_source", "is_default"}


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument", "suggestion"),
    [
        ({"country": "FRX"}, "country", "FRA"),
        ({"country": "Frence"}, "country", "France"),
        ({"zone": "US-CAL"}, "zone", "US-CA"),
        ({"region": "gcp:europe-west99"}, "region", "gcp:europe-west"),
        ({"region": "aws:us-east-7"}, "region", "aws:us-east-1"),
    ],
)
def test_unknown_location_names_argument_and_close_match(kwargs, argument, suggestion) -> None:
    with pytest.raises(ValueError) as error:
        Carbon(**kwargs)
    message = str(error.value)
    assert message.startswith(f"unknown {argument} ")
    assert suggestion in message


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, -math.inf, 5000, 2000.5, "400", True])
def test_bad_intensity_names_intensity(bad) -> None:
    with pytest.raises(ValueError, match="intensity"):
        Carbon(intensity=bad)


@pytest.mark.parametrize("bad", [0.9, 0, -1, math.nan, math.inf, 3.5, "1.2"])
def test_bad_pue_names_pue(bad) -> None:
    with pytest.raises(ValueError, match=r"pue must be .*between 1 .* and 3"):
        Carbon(pue=bad)


def test_pue_bounds_are_inclusive() -> None:
    assert Carbon(pue=1).pue == 1.0
    assert Carbon(pue=3).pue == 3.0


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"country": "FR", "zone": "US-CA"}, ("country", "zone")),
        ({"intensity": 100, "region": "aws:us-east-1"}, ("intensity", "region")),
        ({"country": "FR", "series": "x.csv"}, ("country", "series")),
    ],
)
def test_conflicting_locations(kwargs, names) -> None:
    with pytest.raises(ValueError) as error:
        Carbon(**kwargs)
    for name in names:
        assert name in str(error.value)


def test_interval_must_not_run_backwards() -> None:
    with pytest.raises(ValueError, match="before start"):
        Carbon().intensity_between(10, 5)


# --- time series ----------------------------------------------------------------------------

# Steps: 100 g/kWh from t=1000, 300 from t=1600, 200 from t=2200 (last point).
STEP_POINTS = [(1000, 100.0), (1600, 300.0), (2200, 200.0)]


def write_csv_series(path: Path, points=STEP_POINTS, header="timestamp,g_per_kwh") -> Path:
    path.write_text(header + "\n" + "".join(f"{t},{v}\n" for t, v in points), encoding="utf-8")
    return path


def test_csv_series_time_weighted_mean_over_several_steps(tmp_path: Path) -> None:
    carbon = Carbon(series=write_csv_series(tmp_path / "grid.csv"))
    # [1300, 2000]: 300 s at 100 + 400 s at 300 -> (30000 + 120000) / 700
    intensity = carbon.intensity_between(1300, 2000)
    assert intensity.g_per_kwh == pytest.approx(150000 / 700, rel=1e-12)
    assert intensity.zone == "series:grid.csv"
    assert "extrapolated" not in intensity.source
    # [1000, 2200]: 600 s at 100 + 600 s at 300
    assert carbon.intensity_between(1000, 2200).g_per_kwh == pytest.approx(200.0, rel=1e-12)
    assert carbon.describe()["g_per_kwh"] is None
    assert carbon.describe()["zone"] == "series:grid.csv"
    assert carbon.pue == 1.0


def test_series_zero_length_interval_is_the_value_at_that_instant(tmp_path: Path) -> None:
    carbon = Carbon(series=write_csv_series(tmp_path / "grid.csv"))
    assert carbon.intensity_between(1599, 1599).g_per_kwh == 100.0
    assert carbon.intensity_between(1600, 1600).g_per_kwh == 300.0
    assert carbon.intensity_between(2500, 2500).g_per_kwh == 200.0


def test_series_outside_its_range_uses_nearest_value_and_says_so(tmp_path: Path) -> None:
    carbon = Carbon(series=write_csv_series(tmp_path / "grid.csv"))
    with pytest.warns(Warning, match="greencallbacks: the intensity series grid.csv"):
        before = carbon.intensity_between(0, 500)
    assert before.g_per_kwh == 100.0 and "extrapolated" in before.source
    after = carbon.intensity_between(3000, 4000)
    assert after.g_per_kwh == 200.0 and "extrapolated" in after.source
    # [800, 1200]: 400 s at 100 (200 of them extrapolated before the first point)
    straddling = carbon.intensity_between(800, 1200)
    assert straddling.g_per_kwh == pytest.approx(100.0) and "extrapolated" in straddling.source
    # [2000, 2400]: 200 s at 300, 200 s at 200 (held past the last point)
    assert carbon.intensity_between(2000, 2400).g_per_kwh == pytest.approx(250.0)


def test_json_series_with_iso_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps([
        {"timestamp": "2024-01-01T00:00:00Z", "g_per_kwh": 50},
        {"timestamp": "2024-01-01T01:00:00+00:00", "g_per_kwh": 150},
        {"timestamp": "2024-01-01T03:00:00", "g_per_kwh": 400},  # naive = UTC
    ]), encoding="utf-8")
    start = 1704067200  # 2024-01-01T00:00:00Z
    carbon = Carbon(series=str(path))
    # [00:30, 03:30]: 1800 s at 50 + 7200 s at 150 + 1800 s at 400
    expected = (1800 * 50 + 7200 * 150 + 1800 * 400) / 10800
    intensity = carbon.intensity_between(start + 1800, start + 3 * 3600 + 1800)
    assert intensity.g_per_kwh == pytest.approx(expected, rel=1e-12)
    assert intensity.year == 2024
    assert intensity.zone == "series:grid.json"


def test_json_series_pairs_and_data_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"data": [[0, 10], [100, 30]]}), encoding="utf-8")
    # [50, 150]: 50 s at 10 + 50 s at 30
    assert Carbon(series=path).intensity_between(50, 150).g_per_kwh == pytest.approx(20.0)


def test_csv_series_alternative_column_names_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "alt.csv"
    path.write_text("# hourly, from my provider\ntime,zone,intensity\n0,FR,10\n3600,FR,20\n", encoding="utf-8")
    assert Carbon(series=path).intensity_between(0, 7200).g_per_kwh == pytest.approx(15.0)


@pytest.mark.parametrize(
    ("content", "line", "why"),
    [
        ("time,zone\n0,FR\n", 1, "value column"),
        ("timestamp,g_per_kwh\n0,100\n100,abc\n", 3, "not a number"),
        ("timestamp,g_per_kwh\n0,100\n100,-5\n", 3, "value must be"),
        ("timestamp,g_per_kwh\n0,100\n100,nan\n", 3, "value must be"),
        ("timestamp,g_per_kwh\n0,100\n100,200\n100,300\n", 4, "duplicate timestamp"),
        ("timestamp,g_per_kwh\n0,100\n200,200\n100,300\n", 4, "earlier than"),
        ("timestamp,g_per_kwh\nyesterday,100\n", 2, "yesterday"),
        ("timestamp,g_per_kwh\n0\n", 2, "columns"),
        ("timestamp,g_per_kwh\n", 1, "no data"),
        ("", 1, "no header"),
    ],
)
def test_malformed_csv_series_names_file_and_line(tmp_path: Path, content: str, line: int, why: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        Carbon(series=path)
    message = str(error.value)
    assert "bad.csv" in message
    assert f"line {line}:" in message
    assert why in message


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ('[{"timestamp": 0, "g_per_kwh": 1}, {"timestamp": 0, "g_per_kwh": 2}]', "item 1"),
        ('[{"t": 0, "g_per_kwh": 1}]', "item 0"),
        ('[[0, 1], [10]]', "item 1"),
        ('{"points": []}', "line 1"),
        ('[{"timestamp": 0, "g_per_kwh": 1},', "line 1"),
    ],
)
def test_malformed_json_series_names_file_and_place(tmp_path: Path, document: str, where: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(document, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        Carbon(series=path)
    assert "bad.json" in str(error.value) and where in str(error.value)


def test_missing_series_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.csv"):
        Carbon(series=tmp_path / "missing.csv")


def test_series_object_hook_is_used() -> None:
    class FakeLiveSource:
        def __init__(self) -> None:
            self.calls: list[tuple[float, float]] = []

        def mean_between(self, start_unix: float, end_unix: float) -> Intensity:
            self.calls.append((start_unix, end_unix))
            return Intensity(g_per_kwh=42.0, source="fake live", zone="live:test", year=2025, licence="test")

    source = FakeLiveSource()
    carbon = Carbon(series=source)
    assert carbon.intensity_between(5, 9).g_per_kwh == 42.0
    assert source.calls == [(5, 9)]
    with pytest.raises(ValueError, match="series"):
        Carbon(series=123)


def test_series_loaded_once_at_construction(tmp_path: Path) -> None:
    path = write_csv_series(tmp_path / "grid.csv")
    carbon = Carbon(series=path)
    path.unlink()  # later reads must not touch the file
    assert carbon.intensity_between(1000, 1600).g_per_kwh == pytest.approx(100.0)


def test_intensity_series_direct_integral() -> None:
    series = IntensitySeries(times_unix=(0.0, 10.0), values_g_per_kwh=(1.0, 3.0), name="x")
    assert series.integral(5, 15) == pytest.approx(5 * 1 + 5 * 3)


def scanned_integral(series: IntensitySeries, start: float, end: float) -> float:
    """The plain definition: every step of the series, visited in turn (the reference)."""
    total = 0.0
    edges = [start, *(t for t in series.times_unix if start < t < end), end]
    for left, right in zip(edges, edges[1:]):
        total += series.value_at(left) * (right - left)
    return total


def test_series_integral_equals_the_full_scan_on_random_series() -> None:
    rng = random.Random(7)
    for _ in range(20):
        times = sorted(rng.sample(range(0, 10_000_000), rng.randint(1, 3000)))
        series = IntensitySeries(tuple(float(t) for t in times), tuple(rng.uniform(0, 900) for _ in times), "random")
        for _ in range(50):
            # Inside, across many steps, before the first and after the last timestamp, and instants.
            start = rng.uniform(times[0] - 1e5, times[-1] + 1e5)
            end = start + rng.choice([0.0, rng.uniform(0, 50), rng.uniform(0, 1e6), rng.uniform(0, 2e7)])
            assert series.integral(start, end) == pytest.approx(scanned_integral(series, start, end), rel=1e-9, abs=1e-6)
            if end > start:
                mean = series.mean_between(start, end).g_per_kwh
                assert mean == pytest.approx(scanned_integral(series, start, end) / (end - start), rel=1e-9)


class CountingTuple(tuple):
    """A tuple that counts how many of its items are read, by index or by iteration."""

    reads = 0

    def __getitem__(self, index):
        CountingTuple.reads += 1
        return super().__getitem__(index)

    def __iter__(self):
        for item in super().__iter__():
            CountingTuple.reads += 1
            yield item


def test_series_mean_reads_a_logarithmic_number_of_points() -> None:
    # One year at 5 minutes: asked at every logged step on the training thread, and thousands of
    # times by whatif, a mean must not visit every point.
    count = 105_120
    times = CountingTuple(1.7e9 + 300.0 * i for i in range(count))
    series = IntensitySeries(times, tuple(100.0 + i % 400 for i in range(count)), "year")
    for start, end in [(1.7e9 + 1000, 1.7e9 + 1060), (1.7e9, 1.7e9 + 300.0 * count), (1.8e9, 1.9e9), (1.6e9, 1.6e9)]:
        CountingTuple.reads = 0
        series.mean_between(start, end)
        assert CountingTuple.reads < 20 * math.log2(count), (start, end, CountingTuple.reads)


HOUR = 3600.0
# 2024-05-01T22:00Z and 23:00Z: an hourly series whose last row covers 23:00 to 24:00.
EVENING = 1714600800.0


def test_the_last_point_covers_one_step_as_whatif_counts_it(tmp_path: Path) -> None:
    from greencallbacks.whatif import series_coverage

    carbon = Carbon(series=write_csv_series(tmp_path / "hourly.csv", [(EVENING, 100.0), (EVENING + HOUR, 200.0)]))
    assert carbon._series.coverage == (EVENING, EVENING + 2 * HOUR) == series_coverage(carbon._series)
    inside_last_hour = carbon.intensity_between(EVENING + HOUR + 600, EVENING + HOUR + 1200)
    assert inside_last_hour.g_per_kwh == 200.0 and "extrapolated" not in inside_last_hour.source
    with pytest.warns(Warning, match="is after it"):
        past_it = carbon.intensity_between(EVENING + 2 * HOUR - 60, EVENING + 2 * HOUR + 60)
    assert past_it.g_per_kwh == 200.0 and "extrapolated" in past_it.source


# An hourly series with 5 hours missing across New Year: 23:00's value covers its hour, then none
# until 04:00.
GAP_POINTS = [("2025-12-31T22:00:00Z", 100.0), ("2025-12-31T23:00:00Z", 120.0),
              ("2026-01-01T04:00:00Z", 500.0), ("2026-01-01T05:00:00Z", 520.0)]
NEW_YEAR = 1767225600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize("points, start, end, missing, year", [
    (GAP_POINTS, NEW_YEAR + HOUR, NEW_YEAR + 3 * HOUR, "2026-01-01T00:00:00Z to 2026-01-01T04:00:00Z", 2025),
    # eleven months missing from an hourly series
    ([("2025-01-01T00:00:00Z", 100.0), ("2025-01-01T01:00:00Z", 120.0),
      ("2026-12-01T00:00:00Z", 500.0), ("2026-12-01T01:00:00Z", 520.0)],
     NEW_YEAR + 151 * 24 * HOUR, NEW_YEAR + 151 * 24 * HOUR + HOUR, "2025-01-01T02:00:00Z to 2026-12-01T00:00:00Z", 2025),
])
def test_a_span_inside_a_gap_is_priced_at_the_value_before_it_and_says_so(tmp_path: Path, points, start, end,
                                                                           missing, year) -> None:
    carbon = Carbon(series=write_csv_series(tmp_path / "gappy.csv", points))
    inside = carbon.intensity_between(start, end)
    assert inside.g_per_kwh == 120.0  # held, as before: only the label is new
    assert f"extrapolated: held over a gap in the series from {missing}, value before it used" in inside.source
    assert inside.year == year  # the held value's year, not the span's


def test_a_span_reaching_into_a_gap_is_flagged_and_regular_steps_are_not(tmp_path: Path) -> None:
    carbon = Carbon(series=write_csv_series(tmp_path / "gappy.csv", GAP_POINTS))
    across_a_step = carbon.intensity_between(NEW_YEAR - 1.5 * HOUR, NEW_YEAR - 0.5 * HOUR)
    assert across_a_step.g_per_kwh == pytest.approx(110.0) and "extrapolated" not in across_a_step.source
    before_the_gap = carbon.intensity_between(NEW_YEAR - 0.9 * HOUR, NEW_YEAR)  # 23:00's own hour
    assert before_the_gap.g_per_kwh == 120.0 and "extrapolated" not in before_the_gap.source
    after_the_gap = carbon.intensity_between(NEW_YEAR + 4 * HOUR, NEW_YEAR + 5.5 * HOUR)
    assert after_the_gap.year == 2026 and "extrapolated" not in after_the_gap.source
    into_it = carbon.intensity_between(NEW_YEAR + 3.5 * HOUR, NEW_YEAR + 4.5 * HOUR)
    assert into_it.g_per_kwh == pytest.approx(310.0) and "held over a gap" in into_it.source
    assert "held over a gap" in carbon.intensity_between(NEW_YEAR + 2 * HOUR, NEW_YEAR + 2 * HOUR).source
    twice = IntensitySeries(times_unix=(0.0, 3600.0, 18000.0, 21600.0, 36000.0, 39600.0),
                            values_g_per_kwh=(1.0,) * 6, name="two gaps")
    assert "held over 2 gaps in the series, the first from 1970-01-01T02:00:00Z" in twice.mean_between(0, 39600).source


@pytest.mark.parametrize("times", [
    (0.0, 3600.0, 10800.0, 14400.0),  # one missed hourly row: a 2 h hold is the series' rhythm
    (0.0, 3600.0, 3900.0, 7200.0, 10800.0, 14400.0),  # one stray 5-minute row does not make every hour a gap
])
def test_a_missed_row_or_an_irregular_step_is_no_gap(times) -> None:
    series = IntensitySeries(times_unix=times, values_g_per_kwh=(100.0,) * len(times), name="hourly")
    assert series.gaps == ()
    assert "extrapolated" not in series.mean_between(times[0], times[-1]).source


def test_a_series_whose_resolution_changes_has_no_gaps_but_one_at_the_change_is_found() -> None:
    """Hourly data, then 15-minute data (ENTSO-E's market time unit since October 2025): judged by
    one step for the whole file, every hour of the hourly stretch was a gap (6552 in a year)."""
    hourly = [i * HOUR for i in range(48)]
    quarterly = [hourly[-1] + (i + 1) * 900.0 for i in range(96)]
    series = IntensitySeries(tuple(hourly + quarterly), (100.0,) * 144, name="changing")
    assert series.gaps == ()
    assert "extrapolated" not in series.mean_between(3.25 * HOUR, 3.75 * HOUR).source
    back = IntensitySeries(tuple(quarterly + [quarterly[-1] + (i + 1) * HOUR for i in range(48)]), (100.0,) * 144, name="back")
    assert back.gaps == ()
    late = quarterly[-1] + 10 * HOUR  # hourly data, 10 hours missing, then 15-minute data
    gap = IntensitySeries(tuple(hourly + [late + i * 900.0 for i in range(96)]), (100.0,) * 144, name="gap")
    assert gap.gaps == ((hourly[-1] + HOUR, late),)


def test_records_priced_inside_a_gap_say_so_with_the_held_values_year(tmp_path: Path) -> None:
    # The scripted run is on 2023-11-14, inside a year-long gap after 2022's last value.
    path = write_csv_series(tmp_path / "gap2023.csv", [
        ("2022-12-31T22:00:00Z", 50.0), ("2022-12-31T23:00:00Z", 800.0),
        ("2024-01-01T00:00:00Z", 10.0), ("2024-01-01T01:00:00Z", 20.0)])
    records, messages, _ = scripted_run(tmp_path / "run", Carbon(series=path))
    assert records and all(r.intensity_gco2eq_per_kwh == 800.0 for r in records)
    assert all(r.intensity_year == 2022 for r in records)
    said = [m for m in messages if "has no data from 2023-01-01T00:00:00Z to 2024-01-01T00:00:00Z" in m]
    assert len(said) == 1 and "800 g/kWh (data of 2022" in said[0], messages
    assert all("held over a gap in the series from 2023-01-01T00:00:00Z to 2024-01-01T00:00:00Z" in r.intensity_source
               for r in records)


def scripted_run(tmp_path: Path, carbon: Carbon, epochs: int = 4, power_w: float = 100.0):
    """A tracker on a scripted sensor and a fake clock (wall time 2023-11-14): ``epochs`` train
    phases of 10 s with a logged step in each, then the records and the warnings."""
    from greencallbacks.meter import Meter
    from greencallbacks.records import read_records
    from greencallbacks.tracker import Tracker
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    clock = FakeClock(1000.0)
    sensor = ScriptedSensor("gpu0", clock, power_w=power_w)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = Tracker(carbon=carbon, output_dir=tmp_path, run_id="carbon")
        tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
        for epoch in range(epochs):
            tracker.begin("train", epoch)
            clock.advance(5.0)
            tracker.live()  # a logged step prices the open interval too
            clock.advance(5.0)
            tracker.end("train")
        tracker.finish()
    messages = [str(w.message) for w in caught if str(w.message).startswith("greencallbacks: ")]
    return read_records(tmp_path), messages, sensor.energy_j()


def test_a_series_that_raises_mid_run_loses_no_record(tmp_path: Path) -> None:
    class Flaky:
        name = "flaky feed"

        def __init__(self) -> None:
            self.calls = 0

        def mean_between(self, start_unix: float, end_unix: float) -> Intensity:
            self.calls += 1
            if self.calls > 2:
                raise KeyError("feed went away")
            return Intensity(g_per_kwh=300.0, source="flaky feed", zone="feed:x", year=2023, licence="test")

    records, messages, sensor_j = scripted_run(tmp_path, Carbon(series=Flaky()))
    assert [r.epoch for r in records if r.phase == "train"] == [0, 1, 2, 3]
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(sensor_j) == pytest.approx(4 * 10 * 100.0)
    world = Carbon().static_intensity
    assert world is not None
    fell_back = [r for r in records if "flaky feed failed (KeyError: 'feed went away')" in r.intensity_source]
    assert fell_back and all("fallback: static table" in r.intensity_source for r in fell_back)
    assert records[-1].intensity_gco2eq_per_kwh == pytest.approx(world.g_per_kwh)
    assert len([m for m in messages if "failed" in m]) == 1 and "flaky feed" in messages[0]


@pytest.mark.parametrize("answer", [None, 12.5, Intensity(g_per_kwh=float("nan"), source="x", zone="x", year=None, licence="x")])
def test_a_series_answering_no_valid_intensity_falls_back(answer) -> None:
    class Odd:
        def mean_between(self, start_unix: float, end_unix: float):
            return answer

    with pytest.warns(Warning, match="greencallbacks: the intensity series Odd failed"):
        intensity = Carbon(series=Odd()).intensity_between(0, 60)
    assert intensity.g_per_kwh == Carbon().static_intensity.g_per_kwh  # type: ignore[union-attr]
    assert "fallback: static table" in intensity.source


def test_a_series_in_the_past_warns_once_and_records_the_datas_year(tmp_path: Path) -> None:
    path = write_csv_series(tmp_path / "grid2020.csv", [("2020-01-01T00:00:00Z", 50.0), ("2020-01-01T01:00:00Z", 800.0)])
    records, messages, _ = scripted_run(tmp_path / "run", Carbon(series=path))
    assert len(messages) == 1, messages
    message = messages[0]
    assert "grid2020.csv" in message and "covers 2020-01-01T00:00:00Z to 2020-01-01T02:00:00Z" in message
    assert "from 2023-11-14T22:30:00Z on, the run is after it" in message and "last value, 800 g/kWh" in message
    assert all(r.intensity_year == 2020 and "extrapolated" in r.intensity_source for r in records)


def test_a_series_starting_after_the_run_begins_warns_naming_the_span(tmp_path: Path) -> None:
    start = 1.7e9 + 1000.0  # the scripted run's wall clock at its start
    path = write_csv_series(tmp_path / "late.csv", [(start + 15, 200.0), (start + 25, 600.0)])
    records, messages, _ = scripted_run(tmp_path / "run", Carbon(series=path))
    assert len(messages) == 1, messages
    assert "late.csv" in messages[0] and "the run is before it and priced at its first value, 200 g/kWh" in messages[0]
    # The run is before the series until 22:30:15, not only over its first record (to 22:30:05).
    assert "from 2023-11-14T22:30:00Z until the series begins" in messages[0]
    assert "22:30:05" not in messages[0]
    # The run also outlasts the series: that is in every record concerned, not in more warnings.
    assert "extrapolated" in records[0].intensity_source and "extrapolated" in records[-1].intensity_source


def outside_and_gap_warnings(carbon: Carbon, start: float, end: float) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        carbon.intensity_between(start, end)
    return [str(w.message) for w in caught if str(w.message).startswith("greencallbacks: ")]


@pytest.mark.parametrize("offset", [-3600.0, 3 * HOUR])
def test_a_first_interval_outside_the_series_shorter_than_a_second_names_an_instant_not_an_empty_span(
        tmp_path: Path, offset: float) -> None:
    """The first interval priced outside is often one logged step: "13:25:20Z to 13:25:20Z is
    after it" named a span of no length, and not the run's."""
    carbon = Carbon(series=write_csv_series(tmp_path / "hourly.csv", [(EVENING, 100.0), (EVENING + HOUR, 200.0)]))
    start = EVENING + offset + 20.1
    (message,) = outside_and_gap_warnings(carbon, start, start + 0.4)
    at = "2024-05-01T21:00:20Z" if offset < 0 else "2024-05-02T01:00:20Z"
    assert f"{at} to {at}" not in message
    assert (f"from {at} until the series begins (or the run ends), the run is before it" if offset < 0
            else f"from {at} on, the run is after it") in message


def test_the_gap_warning_names_the_held_values_year_only_when_it_is_not_the_runs(tmp_path: Path) -> None:
    """A 2026 run in a gap of a 2026 series was told "(data of 2026, not of the run)"."""
    same_year = [("2026-03-01T10:00:00Z", 100.0), ("2026-03-01T11:00:00Z", 120.0),
                 ("2026-03-01T16:00:00Z", 500.0), ("2026-03-01T17:00:00Z", 520.0)]
    inside_2026 = Carbon(series=write_csv_series(tmp_path / "gappy2026.csv", same_year))
    march_first_1pm = NEW_YEAR + (31 + 28) * 24 * HOUR + 13 * HOUR
    (message,) = outside_and_gap_warnings(inside_2026, march_first_1pm, march_first_1pm + HOUR)
    assert "has no data from 2026-03-01T12:00:00Z to 2026-03-01T16:00:00Z" in message
    assert "value before it, 120 g/kWh. Any other gap" in message and "data of" not in message
    across_new_year = Carbon(series=write_csv_series(tmp_path / "gappy.csv", GAP_POINTS))
    (message,) = outside_and_gap_warnings(across_new_year, NEW_YEAR + HOUR, NEW_YEAR + 2 * HOUR)
    assert "120 g/kWh (data of 2025, not of the run's year, 2026)" in message


def test_a_series_covering_the_run_does_not_warn(tmp_path: Path) -> None:
    start = 1.7e9 + 1000.0
    path = write_csv_series(tmp_path / "covering.csv", [(start - 60, 200.0), (start + 20, 600.0), (start + 60, 100.0)])
    records, messages, _ = scripted_run(tmp_path / "run", Carbon(series=path))
    assert messages == [] and not any("extrapolated" in r.intensity_source for r in records)
    assert {r.intensity_year for r in records} == {2023}


# --- environment ----------------------------------------------------------------------------


def test_from_env_country_and_pue() -> None:
    carbon = Carbon.from_env({"GREENCALLBACKS_COUNTRY": "fr", "GREENCALLBACKS_PUE": "1.25"})
    assert carbon.describe()["zone"] == "FRA"
    assert carbon.pue == 1.25


def test_from_env_each_location_kind(tmp_path: Path) -> None:
    assert Carbon.from_env({"GREENCALLBACKS_ZONE": "US-TX"}).describe()["zone"] == "US-TX"
    region = Carbon.from_env({"GREENCALLBACKS_REGION": "gcp:us-central1"})
    assert region.describe()["zone"] == "gcp:us-central1" and region.pue == pytest.approx(1.10)
    assert Carbon.from_env({"GREENCALLBACKS_INTENSITY": "250"}).describe()["g_per_kwh"] == 250.0
    series = write_csv_series(tmp_path / "env.csv")
    assert Carbon.from_env({"GREENCALLBACKS_SERIES": str(series)}).describe()["zone"] == "series:env.csv"


def test_from_env_empty_is_default_world_average() -> None:
    carbon = Carbon.from_env({"GREENCALLBACKS_COUNTRY": "  ", "UNRELATED": "x"})
    assert carbon.describe()["is_default"] is True


@pytest.mark.parametrize(
    ("environ", "argument"),
    [
        ({"GREENCALLBACKS_INTENSITY": "lots"}, "intensity"),
        ({"GREENCALLBACKS_INTENSITY": "-3"}, "intensity"),
        ({"GREENCALLBACKS_PUE": "0.5"}, "pue"),
        ({"GREENCALLBACKS_PUE": "high"}, "pue"),
        ({"GREENCALLBACKS_COUNTRY": "FRX"}, "country"),
        ({"GREENCALLBACKS_COUNTRY": "FR", "GREENCALLBACKS_ZONE": "US-CA"}, "country and zone"),
    ],
)
def test_from_env_validates_like_the_constructor(environ, argument) -> None:
    with pytest.raises(ValueError, match=argument):
        Carbon.from_env(environ)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENCALLBACKS_ZONE", "US-NY")
    monkeypatch.delenv("GREENCALLBACKS_COUNTRY", raising=False)
    for name in ("REGION", "INTENSITY", "SERIES", "PUE"):
        monkeypatch.delenv(f"GREENCALLBACKS_{name}", raising=False)
    assert Carbon.from_env().describe()["zone"] == "US-NY"


# --- series files: rows, columns and spans that were taken silently --------------------------


def test_a_row_longer_than_the_header_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    """A short row was refused; a long one was read with its extra cell dropped."""
    path = tmp_path / "long.csv"
    path.write_text("timestamp,gco2eq_per_kwh\n2024-01-01T00:00:00Z,100\n2024-01-01T01:00:00Z,100,extra\n")
    with pytest.raises(ValueError, match=r"long.csv', line 3: expected 2 columns, got 3"):
        IntensitySeries.from_file(path)


@pytest.mark.parametrize("header, says", [
    ("timestamp,value,gco2eq_per_kwh", "'value' and 'gco2eq_per_kwh' are each a value column"),
    ("timestamp,timestamp,gco2eq_per_kwh", "'timestamp' and 'timestamp' are each a time column"),
    ("point_time,value,moer", "'value' and 'moer' are each a value column"),
])
def test_two_columns_that_could_hold_the_series_are_refused_as_ambiguous(tmp_path: Path, header: str, says: str) -> None:
    path = tmp_path / "two.csv"
    path.write_text(f"{header}\n2024-01-01T00:00:00Z,1999,100\n2024-01-01T01:00:00Z,1999,100\n")
    with pytest.raises(ValueError, match=rf"two.csv', line 1: {says}: which one holds the series is ambiguous"):
        IntensitySeries.from_file(path)
    objects = tmp_path / "two.json"
    objects.write_text(json.dumps([{"timestamp": "2024-01-01T00:00:00Z", "value": 1999, "g_per_kwh": 100}]))
    with pytest.raises(ValueError, match=r"item 0: 'value' and 'g_per_kwh' are each a value key"):
        IntensitySeries.from_file(objects)


def test_a_uk_answer_covers_up_to_its_own_to_and_a_single_row_says_it_covers_its_instant(tmp_path: Path) -> None:
    """One period of the UK API covered 0 s although it says its end; one CSV row covers its instant
    (the last row holds one step, and one row has none), and the series says so where it is named."""
    uk = tmp_path / "uk.json"
    uk.write_text(json.dumps({"data": [
        {"from": "2024-01-01T00:00Z", "to": "2024-01-01T00:30Z", "intensity": {"actual": 120, "forecast": 100}},
    ]}))
    series = IntensitySeries.from_file(uk)
    start = series.times_unix[0]
    assert series.coverage == (start, start + 1800)
    assert "extrapolated" not in series.mean_between(start, start + 1800).source
    assert "extrapolated" in series.mean_between(start, start + 1801).source
    single = tmp_path / "single.csv"
    single.write_text("timestamp,gco2eq_per_kwh\n2024-01-01T00:00:00Z,100\n")
    one = IntensitySeries.from_file(single)
    assert one.coverage == (start, start)
    assert one.description == "single.csv (CSV; one point: it covers its own instant only, having no step to hold for)"
    assert "covers its own instant only" in one.mean_between(start, start + 60).source


def test_a_uk_to_before_its_from_is_refused(tmp_path: Path) -> None:
    uk = tmp_path / "uk.json"
    uk.write_text(json.dumps({"data": [
        {"from": "2024-01-01T00:30Z", "to": "2024-01-01T00:30Z", "intensity": {"actual": 120, "forecast": 100}},
    ]}))
    with pytest.raises(ValueError, match=r"uk.json', point 0: 'to' '2024-01-01T00:30Z' is not after the period's 'from'"):
        IntensitySeries.from_file(uk)


def test_a_watttime_value_out_of_range_is_said_as_written_in_its_unit(tmp_path: Path) -> None:
    """It was "got -0.45359237": the -1 lbs/MWh of the file after conversion to g/kWh."""
    path = tmp_path / "wt.csv"
    path.write_text("point_time,value\n2024-01-01T00:00:00Z,-1\n")
    with pytest.raises(ValueError, match=r"wt.csv', line 2: value must be a finite number of lbs_co2_per_mwh between "
                                         r"0 and 4409.25 \(2000 gCO2eq/kWh\), got '-1'$"):
        IntensitySeries.from_file(path)
    saved = tmp_path / "wt.json"
    saved.write_text(json.dumps({"data": [{"point_time": "2024-01-01T00:00:00Z", "value": -1}],
                                 "meta": {"units": "lbs_co2_per_mwh"}}))
    with pytest.raises(ValueError, match=r"lbs_co2_per_mwh between 0 and 4409.25 .*got -1$"):
        IntensitySeries.from_file(saved)


def test_an_empty_series_path_is_named_as_given_and_a_provider_must_be_a_name() -> None:
    """series='' was reported as the directory '.'; provider=1 raised AttributeError on .strip()."""
    with pytest.raises(ValueError, match=r"^series file '' is an empty path"):
        Carbon(series="")
    for region in ("us-east-1", "aws:us-east-1"):
        with pytest.raises(ValueError, match=r"provider must be one of aws, azure, gcp \(a string\), got 1"):
            Carbon(provider=1, region=region)  # type: ignore[arg-type]


# --- bases, common names, ambiguity -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "basis", "label"),
    [
        ({"country": "FR"}, "life-cycle", "life-cycle emissions"),
        ({"zone": "world"}, "life-cycle", "life-cycle emissions"),
        ({}, "life-cycle", "life-cycle emissions"),  # the default world average
        ({"zone": "US-CA"}, "direct", "direct (combustion) emissions only"),
        ({"region": "gcp:europe-west1"}, "direct", "direct (combustion) emissions only"),
        ({"region": "aws:us-east-1"}, "direct", "direct (combustion) emissions only"),  # via US-VA
        ({"region": "azure:westeurope"}, "life-cycle", "life-cycle emissions"),  # via NLD
    ],
)
def test_every_intensity_says_whether_it_is_life_cycle_or_direct(kwargs, basis, label) -> None:
    """Countries and the world average are Ember's life-cycle figures, US states eGRID's direct
    ones: the label says which, so a comparison across them shows it mixes bases."""
    intensity = Carbon(**kwargs).intensity_between(0, 1)
    assert intensity.basis == basis
    assert intensity.source.endswith(label)


def test_every_grid_row_has_a_basis_and_the_tables_keep_theirs_apart() -> None:
    for file_name in ("grid_countries.csv", "grid_world.csv", "grid_us_states.csv"):
        assert {row["basis"] for row in table_rows(file_name)} == (
            {"direct"} if file_name == "grid_us_states.csv" else {"life-cycle"})
    for row in table_rows("cloud_regions.csv"):
        # GCP carries Google's own (operational, direct) figure; AWS/Azure take their zone's basis.
        assert row["basis"] == ("direct" if row["provider"] == "gcp" else "")


@pytest.mark.parametrize(
    ("kwargs", "zone"),
    [
        ({"country": "UK"}, "GBR"),
        ({"country": "Great Britain"}, "GBR"),
        ({"country": "Holland"}, "NLD"),
        ({"country": "The Netherlands"}, "NLD"),
        ({"country": "Ivory Coast"}, "CIV"),
        ({"country": "UAE"}, "ARE"),
        ({"country": "Turkiye"}, "TUR"),
        ({"zone": "California"}, "US-CA"),
        ({"zone": "new york"}, "US-NY"),
        ({"zone": "Holland"}, "NLD"),
        ({"region": "West Europe"}, "azure:westeurope"),
        ({"region": "East US"}, "azure:eastus"),
        ({"region": "azure:East US 2"}, "azure:eastus2"),
        ({"region": "aws: us-east-1"}, "aws:us-east-1"),
        ({"region": "West Europe", "provider": "azure"}, "azure:westeurope"),
    ],
)
def test_common_names_and_display_names_resolve(kwargs, zone) -> None:
    assert Carbon(**kwargs).describe()["zone"] == zone


def test_a_providers_own_region_name_wins_over_a_respelling() -> None:
    # GCP's us-east1 is a region of its own (South Carolina), not AWS's us-east-1 without a hyphen.
    assert Carbon(region="us-east1").describe()["zone"] == "gcp:us-east1"
    assert Carbon(region="us-east-1").describe()["zone"] == "aws:us-east-1"


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"country": "Korea"}, ["country 'Korea' is ambiguous", "South Korea", "KOR", "North Korea", "PRK"]),
        ({"zone": "Korea"}, ["zone 'Korea' is ambiguous", "KOR", "PRK"]),
        ({"zone": "Georgia"}, ["zone 'Georgia' is ambiguous", "GEO", "US-GA"]),
        ({"region": "useast1"}, ["region 'useast1' is ambiguous", "aws:us-east-1", "gcp:us-east1"]),
    ],
)
def test_a_name_of_several_places_is_refused_naming_each(kwargs, says) -> None:
    with pytest.raises(ValueError) as error:
        Carbon(**kwargs)
    for text in says:
        assert text in str(error.value)


def test_georgia_the_country_is_a_country() -> None:
    assert Carbon(country="Georgia").describe()["zone"] == "GEO"


def test_a_us_state_given_as_a_country_points_to_its_zone() -> None:
    with pytest.raises(ValueError) as error:
        Carbon(country="California")
    message = str(error.value)
    assert message.startswith("unknown country 'California'") and "zone='US-CA'" in message
    assert "New Caledonia" not in message


def test_sources_md_claims_no_row_the_country_table_lacks() -> None:
    """SOURCES.md said Kosovo was added by hand; no row was. The upstream data has none."""
    sources = (DATA_DIR / "SOURCES.md").read_text(encoding="utf-8")
    has_kosovo = any(row["alpha3"] == "XKX" for row in table_rows("grid_countries.csv"))
    assert has_kosovo or ("Kosovo has no row" in sources and "added by hand" not in sources.split("## Embodied")[0])


def test_a_table_figure_no_grid_can_have_is_refused_with_the_fix_not_billed_as_0_g() -> None:
    # The shipped table (Our World in Data) gives the Central African Republic 0 g/kWh life-cycle:
    # every run there was billed 0 gCO2eq. Below onshore wind's 11 g/kWh no grid can be.
    for given in ({"country": "CAF"}, {"country": "Central African Republic"}, {"zone": "CF"}):
        with pytest.raises(ValueError, match=r"below what any grid emits over its life cycle .*intensity="):
            Carbon(**given)
    assert "CAF" not in list_zones() and "LSO" in list_zones()  # 20 g/kWh (hydro): a real figure


@pytest.mark.parametrize(("given", "alpha3"), [
    ("England", "GBR"), ("scotland", "GBR"), ("Wales", "GBR"), ("Bosnia", "BIH"), ("Macedonia", "MKD"),
    ("Swaziland", "SWZ"), ("Burma", "MMR"), ("DR Congo", "COD"), ("DRC", "COD"), ("Macau", "MAC"),
])
def test_names_in_common_use_find_their_country(given, alpha3) -> None:
    """England was "unknown country; did you mean 'Greenland', 'Ireland', 'Iceland'?": each
    nation of Great Britain is on its grid, and former names (Burma, Swaziland) are still typed."""
    assert Carbon(country=given).describe()["zone"] == alpha3


@pytest.mark.parametrize(("given", "offered", "not_offered"), [
    ("Kosovo", None, "'SV'"),  # no row; two letters of its six made 'SV' and 'SO' look close
    ("Frnace", "'France'", None),
    ("XK", "'SK'", "Slovakia"),  # a code is offered codes
])
def test_an_unknown_country_is_offered_names_of_a_like_length(given, offered, not_offered) -> None:
    with pytest.raises(ValueError) as error:
        Carbon(country=given)
    message = str(error.value)
    assert message.startswith(f"unknown country {given!r}")
    assert offered is None and "did you mean" not in message or offered in message.split("(")[0], message
    assert not_offered is None or not_offered not in message, message
