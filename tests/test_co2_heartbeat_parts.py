"""CO2eq priced part by part between the heartbeats inside an interval (``_priced_apart``), on a
fake clock: the records against an integral of power x intensity computed here, the licences of
the parts, and what a logging step costs once an epoch holds many parts."""

from __future__ import annotations

import bisect
import random
import warnings

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.carbon.live import LiveIntensitySource, LiveSourceError
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.tracker import Tracker
from greencallbacks.units import J_PER_KWH
from tests.fakes.scripted import FakeClock, ScriptedSensor

REL = 1e-6  # unix stamps near 1.7e9 s round to ~0.2 us: parts of ~1 s carry that much
T0 = 1_700_000_000.0
BUCKET = 900.0
EDGE = T0 - T0 % BUCKET  # a bucket's start


def test_with_a_mark_at_every_step_the_records_are_the_integral_of_power_times_intensity(tmp_path, monkeypatch):
    """Power changes at every step, the series every 7 s; a heartbeat at every count (HEARTBEAT_S 0):
    every record, nested validation and gaps included, is the integral, and the logged totals rise."""
    monkeypatch.setattr("greencallbacks.checkpoint_state.HEARTBEAT_S", 0.0)  # where the tracker reads it
    seed = random.randrange(2**32)
    print("seed", seed)
    rng = random.Random(seed)
    points = [(T0 - 100 + 7 * i, float(rng.choice([0, 50, 200, 400, 800]))) for i in range(400)]
    times = [t for t, _ in points]
    series = tmp_path / "fine.csv"
    series.write_text("timestamp,g_per_kwh\n" + "".join(f"{t!r},{v}\n" for t, v in points))

    def price(start: float, end: float) -> float:  # (g/kWh) x s of the step function
        edges = sorted({start, end, *(t for t in times if start < t < end)})
        return sum(points[max(bisect.bisect_right(times, a) - 1, 0)][1] * (b - a) for a, b in zip(edges, edges[1:]))

    clock = FakeClock(0.0)
    gpu = ScriptedSensor("gpu0", clock, power_w=300.0)
    tracker = Tracker(carbon=Carbon(series=series, pue=1.25), output_dir=tmp_path / "run", run_id="parts")
    tracker.start(Meter([gpu], fallback=None, clock=clock, wall_clock=lambda: clock() + T0))
    expected = {}  # (phase, epoch) -> (joules, grams)
    logged = []

    def step(key, samples=1):
        power, seconds = rng.choice([10.0, 300.0, 700.0]), rng.uniform(0.3, 4.0)
        gpu.set_power(power)
        start = clock() + T0
        joules, grams = expected.get(key, (0.0, 0.0))
        expected[key] = (joules + power * seconds, grams + power * price(start, start + seconds) * 1.25 / J_PER_KWH)
        clock.advance(seconds)
        tracker.add_samples(samples)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the series' end is not reached; nothing else is said
        for epoch in range(2):
            tracker.begin("train", epoch)
            for index in range(40):
                step(("train", epoch))
                if index % 5 == 0:
                    logged.append(tracker.live()["co2eq_g_total"])
                if index == 20:
                    tracker.begin("validation", epoch)
                    for _ in range(8):
                        step(("validation", epoch), 2)
                        logged.append(tracker.live()["co2eq_g_total"])
                    tracker.end("validation")
            tracker.end("train")
            logged.append(tracker.metrics("train")["co2eq_g_total"])
            for _ in range(3):
                step(("other", epoch), 0)
        tracker.finish()
    records = read_records(tmp_path / "run" / "energy-records.jsonl")
    for record in records:
        joules, grams = expected.pop((record.phase, record.epoch))
        assert record.it_energy_kwh == pytest.approx(joules / J_PER_KWH, rel=REL)
        assert record.co2eq_g == pytest.approx(grams, rel=REL), (record.phase, record.epoch)
    assert not expected
    assert all(a <= b * (1 + 1e-12) for a, b in zip(logged, logged[1:])), logged


class HalfFailing(LiveIntensitySource):
    """Answers one of two buckets; the other fails (HTTP 503)."""

    provider = "Half feed"

    def __init__(self, failing: int) -> None:
        super().__init__(zone_label="DE", base_url="http://127.0.0.1:9", fallback_zone="DE", bucket_s=BUCKET)
        self.failing = failing

    def _fetch_points(self, start_unix: float, end_unix: float) -> list[tuple[float, float]]:
        if round((start_unix - EDGE) / BUCKET) == self.failing:
            raise LiveSourceError("HTTP 503 Service Unavailable")
        return [(start_unix, 100.0)]


@pytest.mark.parametrize("failing", [0, 1])
def test_a_record_priced_in_part_by_the_static_table_names_both_licences(tmp_path, failing):
    """Found here: an epoch of 30 minutes across a bucket the live API answered and one it failed.
    Priced as one interval its record said "provider terms of use; CC-BY-4.0"; cut at each
    heartbeat it named the last part's licence alone ("provider terms of use" where the failed
    bucket came first, "CC-BY-4.0" where it came last)."""
    clock = FakeClock(0.0)
    gpu = ScriptedSensor("gpu0", clock, power_w=200.0)
    feed = HalfFailing(failing)
    tracker = Tracker(carbon=Carbon(series=feed), output_dir=tmp_path, run_id="licences")
    tracker.start(Meter([gpu], fallback=None, clock=clock, wall_clock=lambda: clock() + EDGE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the failure is warned of once: tested in test_live_sources.py
        tracker.begin("train", 0)
        for _ in range(180):
            clock.advance(10.0)
            tracker.add_samples(1)
        tracker.end("train")
        tracker.finish()
    [record] = [r for r in read_records(tmp_path / "energy-records.jsonl") if r.phase == "train"]
    assert "fallback: static table" in record.intensity_source and "time-weighted mean" in record.intensity_source
    static_licence = feed.fallback_intensity().licence
    assert set(record.intensity_licence.split("; ")) == {feed.licence, static_licence}, record.intensity_licence


def test_a_logging_step_prices_only_the_parts_since_its_last_call(tmp_path):
    """Found here: ``live`` priced every part since the last boundary again at each logging step,
    1440 of them by the end of a day-long epoch (41 us a call before the parts, 9 ms then). The
    parts up to the newest heartbeat are priced once; the values are the same."""
    clock = FakeClock(0.0)
    gpu = ScriptedSensor("gpu0", clock, power_w=300.0)
    series = tmp_path / "hourly.csv"
    series.write_text("timestamp,g_per_kwh\n" + "".join(f"{T0 + 3600 * i},{100 + 50 * i}\n" for i in range(6)))
    carbon = Carbon(series=series)
    tracker = Tracker(carbon=carbon, output_dir=tmp_path / "run", run_id="cost")
    tracker.start(Meter([gpu], fallback=None, clock=clock, wall_clock=lambda: clock() + T0))
    priced = []
    price = carbon.intensity_between
    carbon.intensity_between = lambda t0, t1: priced.append((t0, t1)) or price(t0, t1)
    tracker.begin("train", 0)
    logged = []
    for minute in range(300):  # five hours, a heartbeat a minute, a logging step every 20 s
        gpu.set_power(300.0 if minute % 2 else 30.0)
        for _ in range(3):
            clock.advance(20.0)
            tracker.add_samples(1)
            del priced[:]
            logged.append(tracker.live()["co2eq_g_total"])
            assert len(priced) <= 3, (minute, len(priced))  # the newest part, the open one (and a heartbeat's)
    tracker.end("train")
    emitted = sum((300.0 if minute % 2 else 30.0) * 60 * (100 + 50 * (minute // 60)) for minute in range(300)) / J_PER_KWH
    assert tracker.metrics("train")["co2eq_g_total"] == pytest.approx(emitted, rel=REL)
    assert logged[-1] == pytest.approx(emitted, rel=REL)
    assert all(a <= b * (1 + 1e-12) for a, b in zip(logged, logged[1:]))
    tracker.finish()
