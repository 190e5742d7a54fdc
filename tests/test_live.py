"""Energy so far at the frameworks' own logging cadence (``Tracker.live`` and the three adapters).

The core part runs on a fake clock with a scripted sensor, so every value is exact. The adapters
run real fits on CPU with a scripted constant-power sensor on the real clock and read the real
logger files back (TensorBoard event files, Lightning's metrics.csv, HF's ``log_history``).
"""

from __future__ import annotations

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

J_PER_KWH = 3.6e6


# ------------------------------------------------------------------------------------- core
def started(power_w=100.0, pue=1.5, intensity=300.0, output_dir=None):
    clock, wall = FakeClock(), FakeClock(1.7e9)

    def advance(seconds):
        clock.advance(seconds)
        wall.advance(seconds)

    sensor = ScriptedSensor("gpu", clock, power_w)
    tracker = Tracker(carbon=Carbon(intensity=intensity, pue=pue), output_dir=output_dir)
    tracker.start(Meter([sensor], clock=clock, wall_clock=wall))
    return tracker, sensor, advance


def test_live_totals_include_open_phases_and_add_no_record(tmp_path):
    tracker, sensor, advance = started(output_dir=tmp_path)
    advance(1.0)
    tracker.begin("train", 0)  # the 1 s gap is closed but not yet published
    advance(2.0)
    live = tracker.live()
    assert live["energy_kwh_total"] * J_PER_KWH == pytest.approx(100.0 * 3.0 * 1.5, rel=1e-12)
    assert live["co2eq_g_total"] == pytest.approx(live["energy_kwh_total"] * 300.0, rel=1e-12)
    assert live["power_w"] == pytest.approx(100.0, rel=1e-12)  # IT power, before PUE
    advance(1.0)
    tracker.begin("validation", 0)  # nested: the train phase holds a billed segment now
    advance(0.5)
    sensor.set_power(300.0)
    advance(0.5)
    live = tracker.live(prefix="energy/")
    assert set(live) == {"energy/energy_kwh_total", "energy/co2eq_g_total", "energy/power_w"}
    assert live["energy/energy_kwh_total"] * J_PER_KWH == pytest.approx((400.0 + 50.0 + 150.0) * 1.5, rel=1e-12)
    assert live["energy/power_w"] == pytest.approx((100.0 + 50.0 + 150.0) / 2.0, rel=1e-12)  # since the previous call
    tracker.end("validation")
    advance(1.0)
    last_live = tracker.live()
    record = tracker.end("train")
    # The epoch's logged total is the live value at its end: nothing billed twice or lost.
    assert tracker.metrics("train")["energy_kwh_total"] == pytest.approx(last_live["energy_kwh_total"], rel=1e-12)
    assert tracker.metrics("train")["co2eq_g_total"] == pytest.approx(last_live["co2eq_g_total"], rel=1e-12)
    assert record.energy_kwh * J_PER_KWH == pytest.approx((300.0 + 300.0) * 1.5, rel=1e-12)
    tracker.finish()
    assert tracker.live() == {}  # not running
    written = read_records(tmp_path)
    assert [r.phase for r in written] == ["other", "validation", "train"]  # no record from live()
    assert sum(r.energy_kwh for r in written) == pytest.approx(tracker.total_energy_j / J_PER_KWH, rel=1e-12)


def test_live_values_only_grow_and_never_pass_the_next_boundary():
    tracker, sensor, advance = started()
    values = []
    for epoch in range(3):
        tracker.begin("train", epoch)
        for _ in range(5):
            advance(0.25)
            values.append(tracker.live()["energy_kwh_total"])
        tracker.begin("validation", epoch)
        advance(0.1)
        values.append(tracker.live()["energy_kwh_total"])
        tracker.end("validation")
        tracker.end("train")
        assert values[-1] <= tracker.metrics("train")["energy_kwh_total"]
        advance(0.05)
    assert values == sorted(values) and len(set(values)) == len(values)
    tracker.finish()


def test_a_restarted_tracker_measures_power_from_its_new_meter():
    tracker, _, advance = started()
    advance(1.0)
    tracker.live()
    tracker.finish()
    clock = FakeClock(5000.0)
    tracker.start(Meter([ScriptedSensor("gpu", clock, 40.0)], clock=clock))
    clock.advance(2.0)
    assert tracker.live()["power_w"] == pytest.approx(40.0, rel=1e-12)
    tracker.finish()
