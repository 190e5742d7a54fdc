"""The system clock stepping during a run (NTP, ``date -s``, a resync after a suspend): no phase,
pause or run end is lost to it. Every clock here is fake; nothing sleeps."""

import dataclasses
import datetime as dt
import warnings

import pytest

import greencallbacks.carbon_aware as carbon_aware
import greencallbacks.meter as meter_module
from greencallbacks.carbon import Carbon
from greencallbacks.carbon_aware import CarbonAwarePause
from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks.records import read_records
from greencallbacks.runlock import RunLock
from greencallbacks.sensors.base import Kind, Method
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

T0 = 1.7e9


class SteppingWall:
    """A wall clock that follows ``clock`` until told to step."""

    def __init__(self, clock):
        self.clock, self.offset = clock, T0

    def __call__(self):
        return self.clock() + self.offset

    def step(self, seconds):
        self.offset += seconds


def run_three_epochs(tracker, clock, step_during_epoch_1):
    for epoch in range(3):
        clock.advance(1)
        tracker.begin("train", epoch)
        clock.advance(5)
        if epoch == 1:
            step_during_epoch_1()
        clock.advance(5)
        tracker.end("train")
    clock.advance(1)
    tracker.finish()


# ---------------------------------------------------------------------------------- meter stamps
@pytest.mark.parametrize("step_s", [-2.0, -3600.0, 30.0])
def test_a_wall_clock_step_moves_no_snapshot_stamp(step_s):
    clock = FakeClock()
    wall = SteppingWall(clock)
    meter = Meter([ScriptedSensor("gpu0", clock)], fallback=None, clock=clock, wall_clock=wall)
    first = meter.snapshot()
    clock.advance(5)
    wall.step(step_s)
    clock.advance(5)
    later, peeked = meter.snapshot(), meter.peek()
    # Stamps advance with the clock the durations come from, whatever the wall clock did.
    assert later.unix_s - first.unix_s == pytest.approx(10.0)
    assert peeked.unix_s == later.unix_s
    assert first.unix_s == pytest.approx(T0 + 1000.0)  # the injected wall clock, read once


def test_by_default_stamps_advance_by_the_steady_clock_not_the_wall_clock(monkeypatch):
    steady = FakeClock(50.0)
    monkeypatch.setattr(meter_module, "since_boot", steady)
    wall = SteppingWall(steady)
    meter = Meter([ScriptedSensor("gpu0", steady)], fallback=None, wall_clock=wall)  # default clock
    first = meter.snapshot()
    wall.step(-3600.0)
    steady.advance(7.0)
    assert meter.snapshot().unix_s - first.unix_s == pytest.approx(7.0)


def test_a_wall_clock_that_gives_no_time_is_refused_by_name():
    with pytest.raises(ValueError, match="wall_clock"):
        Meter([], wall_clock=lambda: "now")


# ------------------------------------------------------------------------------- tracker records
@pytest.mark.parametrize("step_s", [-2.0, -3600.0])
def test_a_backward_step_mid_epoch_loses_no_record(tmp_path, step_s):
    """It lost the epoch's training record (2400 J of 3400 J written): the window ended before it
    began, and pricing it raised after its record had left the pending list."""
    clock = FakeClock()
    wall = SteppingWall(clock)
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock, wall_clock=wall)
    tracker = Tracker(carbon=Carbon(intensity=400, pue=1.0), output_dir=tmp_path)
    tracker.start(meter)
    run_three_epochs(tracker, clock, lambda: wall.step(step_s))
    records = read_records(tmp_path)
    assert [(r.phase, r.epoch) for r in records if r.phase == "train"] == [("train", 0), ("train", 1), ("train", 2)]
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(3400.0)
    assert tracker.total_energy_j == pytest.approx(3400.0)
    starts = [dt.datetime.fromisoformat(r.start_time) for r in sorted(records, key=lambda r: r.start_time)]
    assert [r.seq for r in sorted(records, key=lambda r: r.start_time)] == sorted(r.seq for r in records)
    assert (starts[-1] - starts[0]).total_seconds() == pytest.approx(33.0)
    assert (tmp_path / "energy-summary.json").is_file() and not tracker.running


def test_a_stamp_that_goes_back_at_a_boundary_never_loses_the_phase(tmp_path):
    """Defence in depth, for a meter whose stamps do step back: the segment is clamped."""
    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                  wall_clock=lambda: clock() + T0)
    real_snapshot, back = meter.snapshot, [0.0]

    def snapshot(exact=False):
        taken = real_snapshot(exact)
        return dataclasses.replace(taken, unix_s=taken.unix_s + back[0])

    meter.snapshot = snapshot
    tracker = Tracker(carbon=Carbon(intensity=400, pue=1.0), output_dir=tmp_path)
    tracker.start(meter)

    def step_back():
        back[0] -= 3600.0

    run_three_epochs(tracker, clock, step_back)
    records = read_records(tmp_path)
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(3400.0)
    assert len([r for r in records if r.phase == "train"]) == 3
    assert all(r.co2eq_g >= 0 for r in records)


def training_started(tmp_path, run_id):
    """A tracker 5 s into epoch 0's training, on a scripted sensor and a fake clock."""
    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock)], fallback=None, clock=clock, wall_clock=lambda: clock() + T0)
    tracker = Tracker(carbon=Carbon(intensity=400), output_dir=tmp_path, run_id=run_id)
    tracker.start(meter)
    tracker.begin("train", 0)
    clock.advance(5)
    return tracker, clock


def test_finish_stops_the_run_even_when_its_write_up_fails(tmp_path):
    """A failure while writing up the run's end left it "running": the meter's thread alive, the
    records file open, the run's claim held, no summary."""
    tracker, clock = training_started(tmp_path, "ends")
    tracker.end("train")

    def fails(seq):
        raise RuntimeError("write-up failed")

    tracker._publish = fails
    with pytest.raises(RuntimeError, match="write-up failed"):
        tracker.finish()
    assert not tracker.running
    assert RunLock(tmp_path, "ends").acquire()  # the claim was given back
    assert (tmp_path / "energy-summary.json").is_file()


def test_a_record_that_fails_to_build_keeps_the_pending_ones_for_the_next_boundary(tmp_path):
    """The pending list was emptied before the records were built: one failure lost them all."""
    tracker_clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", tracker_clock, power_w=100.0)], fallback=None, clock=tracker_clock,
                  wall_clock=lambda: tracker_clock() + T0)
    tracker = Tracker(carbon=Carbon(intensity=400, pue=1.0), output_dir=tmp_path)
    tracker.start(meter)
    real_local_record, failures = tracker._local_record, [1]

    def fails_once(*closed):
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("could not build the record")
        return real_local_record(*closed)

    tracker._local_record = fails_once
    tracker_clock.advance(0.25)  # a short gap: published with the phase after it, at its end
    tracker.begin("train", 0)
    tracker_clock.advance(10)
    with pytest.raises(RuntimeError):
        tracker.end("train")
    tracker_clock.advance(1)
    tracker.finish()
    records = read_records(tmp_path)
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(1125.0)
    assert any(r.phase == "train" and r.epoch == 0 for r in records)


def test_abort_stops_the_run_even_when_its_records_fail_to_build(tmp_path):
    tracker, clock = training_started(tmp_path, "aborts")

    def fails(*closed):
        raise RuntimeError("could not build the record")

    tracker._local_record = fails
    with pytest.raises(RuntimeError):
        tracker.abort()
    assert not tracker.running
    assert RunLock(tmp_path, "aborts").acquire()


# --------------------------------------------------------------------------- carbon-aware pauses
class Steady:
    """A steady clock that the fake ``sleep`` advances, beside a wall clock that may step."""

    def __init__(self, step_at_sleep, step_s):
        self.now, self.wall_offset, self.sleeps = 50.0, T0, 0
        self.step_at_sleep, self.step_s = step_at_sleep, step_s

    def __call__(self):
        return self.now

    def wall(self):
        return self.now + self.wall_offset

    def sleep(self, seconds):
        self.sleeps += 1
        self.now += seconds
        if self.sleeps == self.step_at_sleep:
            self.wall_offset += self.step_s


@pytest.mark.parametrize("step_s", [30.0, -3600.0])
def test_a_wall_clock_step_during_a_pause_is_not_taken_for_waiting(step_s):
    """Forward, the step was counted as paused (30.2 s paused in a 0.2 s gap, spending the delay
    budget); back, it ended the pause at once with a negative duration."""
    clock = Steady(step_at_sleep=2, step_s=step_s)
    gate = CarbonAwarePause(10, 1000, check_every_s=60, sleep=clock.sleep, clock=clock.wall, steady_clock=clock)
    paused = gate.maybe_pause(Carbon(intensity=400))
    assert paused == gate.total_paused_s == pytest.approx(1000.0)  # the whole budget, slept in steps
    assert clock.sleeps == 17  # 16 x 60 s + 40 s
    (record,) = gate.pauses
    assert record.start_unix == T0 + 50.0 and record.duration_s == pytest.approx(1000.0)


def test_by_default_a_pause_is_timed_by_the_steady_clock(monkeypatch):
    steady = FakeClock(50.0)
    monkeypatch.setattr(carbon_aware, "since_boot", steady)
    gate = CarbonAwarePause(10, 900, check_every_s=300, sleep=steady.advance)  # default clock: time.time
    assert gate.maybe_pause(Carbon(intensity=400)) == pytest.approx(900.0)
    (record,) = gate.pauses
    assert record.duration_s == pytest.approx(900.0)
    assert gate.for_a_new_run().maybe_pause(Carbon(intensity=400)) == pytest.approx(900.0)


# ------------------------------------------------------------------------------- failure notes
def test_a_sensor_failure_note_gives_the_meters_wall_time_in_utc_with_its_date():
    """It gave the local time of day from time.strftime, without date or zone, beside UTC
    records, and ignored the meter's wall clock."""
    clock = FakeClock()
    gpu = ScriptedSensor("gpu0", clock, power_w=100.0)
    estimate = ScriptedSensor("gpu0-estimate", clock, power_w=50.0, method=Method.ESTIMATED, kind=Kind.GPU)
    meter = Meter([gpu], fallback=lambda s: estimate, clock=clock, wall_clock=lambda: clock() + T0)
    start = meter.snapshot()
    clock.advance(10)
    gpu.fail_with = RuntimeError("GPU fell off the bus")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EnergyWarning)
        end = meter.snapshot()
    (component,) = meter.between(start, end).components
    when = dt.datetime.fromtimestamp(T0 + 1010, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert component.note == f"counter until {when} (GPU fell off the bus); estimated since"
