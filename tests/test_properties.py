"""Invariants, checked with hypothesis over random inputs.

- energy is never negative: meter windows over random power sequences, failures and counters
  that jump around;
- totals only grow: a tracker driven through random begin / end / add_samples sequences;
- the records of a run sum to its total, and their durations to its elapsed time;
- RAPL wraparound arithmetic is exact for any increments below the range, polled in between;
- unit conversions round-trip.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greencallbacks import units
from greencallbacks.meter import Meter
from greencallbacks.records import PHASES
from greencallbacks.sensors.base import Kind, Method, Sensor, SensorError
from greencallbacks.sensors.rapl import MAX_PLAUSIBLE_POWER_W, RaplSensor
from greencallbacks.tracker import Tracker
from tests.fakes.fake_powercap import FakePowercap
from tests.fakes.scripted import FakeClock, ScriptedSensor

SETTINGS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])

powers = st.floats(min_value=0.0, max_value=2000.0, allow_nan=False)
durations = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)


class ErraticSensor(Sensor):
    """A counter that returns whatever the test says: backwards jumps, resets, failures."""

    method = Method.COUNTER
    kind = Kind.GPU

    def __init__(self, name: str, readings: list) -> None:
        self.name, self.scope = name, name
        self._readings = iter(readings)

    def energy_j(self) -> float:
        value = next(self._readings, 0.0)
        if value is None:
            raise SensorError("erratic failure")
        return value


# ---------------------------------------------------------------------------- the meter
meter_steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), durations),
        st.tuples(st.just("power"), powers),
        st.tuples(st.just("fail"), st.booleans()),
        st.tuples(st.just("snapshot"), st.none()),
    ),
    max_size=40,
)


@SETTINGS
@given(steps=meter_steps, fallback=st.booleans())
def test_windows_are_never_negative_and_readings_never_go_back(steps, fallback):
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)
    spare = ScriptedSensor("gpu0-estimate", clock, power_w=50.0, method=Method.ESTIMATED)
    meter = Meter([sensor], fallback=(lambda s: spare) if fallback else None, clock=clock, wall_clock=clock)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshots = [meter.snapshot()]
        for action, value in steps:
            if action == "advance":
                clock.advance(value)
            elif action == "power":
                sensor.set_power(value)
            elif action == "fail" and value:
                sensor.fail_with = SensorError("gone")
            else:
                snapshots.append(meter.snapshot())
        snapshots.append(meter.snapshot())
    readings = [s.energy_j["gpu0"] for s in snapshots]
    assert all(b >= a for a, b in zip(readings, readings[1:]))
    for i, start in enumerate(snapshots):
        for end in snapshots[i:]:
            window = meter.between(start, end)
            assert window.energy_j >= 0 and window.duration_s >= 0
            assert all(c.energy_j >= 0 and c.uncertainty_j >= 0 for c in window.components)


@SETTINGS
@given(readings=st.lists(st.one_of(st.none(), st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)), max_size=30))
def test_an_erratic_counter_never_makes_a_window_negative(readings):
    meter = Meter([ErraticSensor("gpu0", readings)], fallback=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshots = [meter.snapshot() for _ in range(len(readings) + 1)]
    for start, end in zip(snapshots, snapshots[1:]):
        assert meter.between(start, end).energy_j >= 0


# -------------------------------------------------------------------------- the tracker
tracker_steps = st.lists(
    st.one_of(
        st.tuples(st.just("begin"), st.sampled_from(PHASES[:-1])),
        st.tuples(st.just("end"), st.sampled_from(PHASES[:-1])),
        st.tuples(st.just("samples"), st.integers(min_value=0, max_value=512)),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=600.0, allow_nan=False)),
        st.tuples(st.just("power"), powers),
    ),
    max_size=60,
)


@SETTINGS
@given(steps=tracker_steps, epochs=st.integers(min_value=0, max_value=5))
def test_totals_only_grow_and_the_records_add_up_to_the_run(steps, epochs):
    clock = FakeClock(start=0.0)
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)
    tracker = Tracker(run_id="property")
    tracker.start(Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    started = clock()
    last_total, epoch = 0.0, 0
    for action, value in steps:
        if action == "begin":
            tracker.begin(value, epoch)
            epoch = (epoch + 1) % (epochs + 1)
        elif action == "end":
            tracker.end(value)
        elif action == "samples":
            tracker.add_samples(value)
        elif action == "advance":
            clock.advance(value)
        else:
            sensor.set_power(value)
        assert tracker.total_energy_j >= last_total
        assert all(t.energy_j >= 0 and t.samples >= 0 and t.duration_s >= 0 for t in tracker.totals.values())
        last_total = tracker.total_energy_j
    tracker.finish()
    assert tracker.total_energy_j >= last_total
    records = list(tracker.records)
    truth_j = sensor.energy_j()  # the sensor's exact integral since it was created
    scale = max(1.0, truth_j)
    assert sum(r.energy_j for r in records) == pytest.approx(tracker.total_energy_j, rel=1e-9, abs=1e-9)
    assert tracker.total_energy_j == pytest.approx(truth_j, rel=1e-9, abs=1e-9 * scale)
    assert sum(r.duration_s for r in records) == pytest.approx(clock() - started, rel=1e-9, abs=1e-9)
    assert len({r.seq for r in records}) == len(records)
    assert all(r.energy_kwh >= 0 and r.co2eq_g >= 0 for r in records)


# ------------------------------------------------------------------------------- RAPL
@SETTINGS
@given(
    range_uj=st.integers(min_value=1_000, max_value=2**40),
    start_fraction=st.floats(min_value=0.0, max_value=0.999),
    increments=st.lists(st.floats(min_value=0.0, max_value=0.999999), max_size=40),
    boundary_reads=st.lists(st.booleans(), max_size=40),
)
def test_rapl_wraparound_arithmetic_is_exact(range_uj, start_fraction, increments, boundary_reads):
    with tempfile.TemporaryDirectory() as root:
        powercap = FakePowercap(Path(root))
        zone = powercap.add_package(0, max_energy_range_uj=range_uj, energy_uj=int(start_fraction * range_uj))
        clock = FakeClock()
        sensor = RaplSensor(zone.path, clock=clock)
        consumed_uj = 0
        for i, fraction in enumerate(increments):
            step_uj = int(fraction * (range_uj - 1))  # below the range: at most one wrap between reads
            clock.advance(step_uj / 1e6 / MAX_PLAUSIBLE_POWER_W)  # drawn at the most a zone can draw
            consumed_uj += step_uj
            zone.total_uj += step_uj
            zone._write()
            if i < len(boundary_reads) and boundary_reads[i]:
                sensor.energy_j()  # a phase boundary
            else:
                sensor.poll()  # the background thread
        assert sensor.energy_j() * 1e6 == pytest.approx(consumed_uj, abs=1e-3)


# ------------------------------------------------------------------------------- units
finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(energy_j=finite)
def test_joules_and_kwh_round_trip(energy_j):
    assert units.kwh_to_j(units.j_to_kwh(energy_j)) == pytest.approx(energy_j, rel=1e-12, abs=1e-12)
    assert units.j_to_kwh(units.kwh_to_j(energy_j)) == pytest.approx(energy_j, rel=1e-12, abs=1e-12)
    assert units.j_to_kwh(energy_j) * units.J_PER_KWH == pytest.approx(energy_j, rel=1e-12, abs=1e-12)


@SETTINGS
@given(
    energy_j=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    intensity=st.floats(min_value=0, max_value=2000, allow_nan=False),
    k=st.floats(min_value=0, max_value=1000, allow_nan=False),
)
def test_co2eq_is_linear_in_energy_and_intensity(energy_j, intensity, k):
    grams = units.co2eq_g(energy_j, intensity)
    assert grams >= 0
    assert units.co2eq_g(k * energy_j, intensity) == pytest.approx(k * grams, rel=1e-9, abs=1e-12)
    assert units.co2eq_g(energy_j, k * intensity) == pytest.approx(k * grams, rel=1e-9, abs=1e-12)
    assert grams == pytest.approx(units.j_to_kwh(energy_j) * intensity, rel=1e-12, abs=1e-15)


@SETTINGS
@given(
    energy_j=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    duration_s=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
def test_mean_power_times_duration_is_the_energy(energy_j, duration_s):
    power = units.mean_power_w(energy_j, duration_s)
    assert math.isfinite(power) and power >= 0
    if duration_s > 1e-6:
        assert power * duration_s == pytest.approx(energy_j, rel=1e-9)
    if duration_s <= 0:
        assert power == 0.0
