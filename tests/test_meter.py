import threading
import time

import pytest

import greencallbacks.meter as meter_module
from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks.sensors.base import Kind, Method, SensorError
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.fakes.system_clock import SystemClock


def make_meter(clock, *sensors, fallback=None, **kwargs):
    return Meter(sensors, fallback=fallback, clock=clock, wall_clock=lambda: clock() + 1.7e9, **kwargs)


def test_window_energy_is_power_times_time_per_component():
    clock = FakeClock()
    gpu = ScriptedSensor("gpu0", clock, power_w=300.0)
    cpu = ScriptedSensor("cpu", clock, power_w=50.0, kind=Kind.CPU)
    meter = make_meter(clock, gpu, cpu)
    window = meter.start()
    clock.advance(10.0)
    result = window.stop()
    assert result.duration_s == pytest.approx(10.0)
    assert {c.name: c.energy_j for c in result.components} == pytest.approx({"gpu0": 3000.0, "cpu": 500.0})
    assert result.energy_j == pytest.approx(3500.0)
    assert [c.method for c in result.components] == ["counter", "counter"]


def test_windows_nest_and_overlap_without_resetting_counters():
    clock = FakeClock()
    gpu = ScriptedSensor("gpu0", clock, power_w=100.0)
    meter = make_meter(clock, gpu)
    outer = meter.start()
    clock.advance(1.0)
    inner = meter.start()
    clock.advance(2.0)
    overlapping = meter.start()
    assert inner.stop().energy_j == pytest.approx(200.0)
    clock.advance(3.0)
    assert overlapping.stop().energy_j == pytest.approx(300.0)
    assert outer.stop().energy_j == pytest.approx(600.0)


def test_measure_context_manager_keeps_result():
    clock = FakeClock()
    meter = make_meter(clock, ScriptedSensor("gpu0", clock, power_w=10.0))
    with meter.measure() as window:
        clock.advance(4.0)
    assert window.result is not None and window.result.energy_j == pytest.approx(40.0)


def test_duplicate_sensor_names_rejected():
    clock = FakeClock()
    with pytest.raises(ValueError, match="unique"):
        Meter([ScriptedSensor("x", clock), ScriptedSensor("x", clock)], fallback=None)


def test_failing_sensor_degrades_to_fallback_warns_once_and_stays_continuous():
    clock = FakeClock()
    rapl = ScriptedSensor("cpu-package-0", clock, power_w=80.0, kind=Kind.CPU)
    estimate = ScriptedSensor("estimate", clock, power_w=20.0, kind=Kind.CPU, method=Method.ESTIMATED)
    meter = make_meter(clock, rapl, fallback=lambda s: estimate)
    start = meter.snapshot()
    clock.advance(10.0)
    meter.snapshot()  # 800 J counted by the counter
    rapl.fail_with = PermissionError("energy_uj: permission denied")
    with pytest.warns(EnergyWarning, match="cpu-package-0.*permission denied.*estimated") as caught:
        meter.snapshot()
        clock.advance(5.0)
        end = meter.snapshot()
        clock.advance(5.0)
        later = meter.snapshot()
    assert len([w for w in caught if issubclass(w.category, EnergyWarning)]) == 1
    measured = meter.between(start, end)
    # 800 J from the counter, then 5 s of the 20 W estimate; nothing lost, nothing negative.
    assert measured.energy_j == pytest.approx(900.0)
    component = measured.components[0]
    assert component.name == "cpu-package-0"  # the channel keeps its name
    assert component.method == "estimated"
    assert "counter until" in component.note
    assert meter.between(end, later).energy_j == pytest.approx(100.0)
    assert rapl.closed


def test_failing_sensor_without_fallback_stops_counting_labelled():
    clock = FakeClock()
    gpu = ScriptedSensor("gpu0", clock, power_w=100.0)
    meter = make_meter(clock, gpu)
    start = meter.snapshot()
    clock.advance(2.0)
    gpu.fail_with = SensorError("GPU is lost")
    with pytest.warns(EnergyWarning, match="no longer counted"):
        end = meter.snapshot()
    clock.advance(2.0)
    assert meter.between(start, meter.snapshot()).energy_j == pytest.approx(0.0)
    assert "stopped counting" in meter.between(start, end).components[0].note


def test_counter_going_backwards_never_gives_negative_energy():
    clock = FakeClock()
    gpu = ScriptedSensor("gpu0", clock, power_w=100.0)
    meter = make_meter(clock, gpu)
    clock.advance(5.0)
    before = meter.snapshot()
    gpu._energy = 0.0  # a sensor that misbehaves: the meter holds its high-water mark
    clock.advance(1.0)
    after = meter.snapshot()
    assert meter.between(before, after).energy_j == 0.0


def test_quantised_counter_reports_uncertainty_of_one_update_period():
    clock = FakeClock()
    gpu = ScriptedSensor("gpu0", clock, power_w=700.0, update_period_s=0.1)
    meter = make_meter(clock, gpu)
    window = meter.start()
    clock.advance(2.0)
    component = window.stop().components[0]
    assert component.uncertainty_j == pytest.approx(0.1 * 700.0)


def test_estimates_carry_wide_uncertainty():
    clock = FakeClock()
    est = ScriptedSensor("cpu", clock, power_w=40.0, method=Method.ESTIMATED, kind=Kind.CPU)
    meter = make_meter(clock, est)
    window = meter.start()
    clock.advance(10.0)
    component = window.stop().components[0]
    assert component.uncertainty_j == pytest.approx(0.5 * 400.0)


def test_sync_hook_runs_before_every_snapshot_and_its_failure_is_ignored():
    clock = FakeClock()
    calls = []

    def sync():
        calls.append(clock())
        raise RuntimeError("device gone")

    meter = Meter([ScriptedSensor("gpu0", clock)], fallback=None, sync=sync, clock=clock)
    meter.snapshot()
    meter.snapshot()
    assert len(calls) == 2


class PolledSensor(ScriptedSensor):
    poll_interval_s = 0.001


def test_background_thread_starts_lazily_polls_stops_and_restarts():
    clock = FakeClock()
    sensor = PolledSensor("gpu0", clock, method=Method.SAMPLED)
    meter = Meter([sensor], fallback=None, clock=time.monotonic)
    assert not meter.sampling  # nothing started at construction
    meter.snapshot()
    assert meter.sampling
    deadline = time.monotonic() + 2
    while sensor.polls < 3 and time.monotonic() < deadline:
        time.sleep(0.002)
    assert sensor.polls >= 3
    meter.stop_sampling()
    assert not meter.sampling
    assert not [t for t in threading.enumerate() if t.name == "greencallbacks-meter"]
    meter.snapshot()
    assert meter.sampling
    meter.close()
    assert not [t for t in threading.enumerate() if t.name == "greencallbacks-meter"]


def test_no_thread_when_no_sensor_needs_polling():
    clock = FakeClock()
    meter = make_meter(clock, ScriptedSensor("gpu0", clock))
    meter.snapshot()
    assert not meter.sampling


def test_dead_background_thread_is_restarted_with_a_warning():
    clock = FakeClock()
    sensor = PolledSensor("gpu0", clock, method=Method.SAMPLED)
    meter = Meter([sensor], fallback=None, clock=time.monotonic)
    meter.snapshot()
    # Kill the thread the way an unexpected crash would: its stop flag never set by us.
    poller = meter._poller
    poller._stop.set()
    poller._thread.join(timeout=2)
    poller._stop.clear()
    with pytest.warns(EnergyWarning, match="restarted"):
        meter.snapshot()
    assert meter.sampling and poller.restarts == 1
    meter.close()


# -- slow counters read off the training thread -------------------------------------------------


class SlowSensor(ScriptedSensor):
    """A counter too slow for the training thread (like NVML's), with cheap instantaneous power."""

    off_thread = True

    def __init__(self, *args, instant=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.instant = instant

    def power_now_w(self):
        return self.power_w if self.instant else None


class HangingSensor(SlowSensor):
    """A slow counter whose reads hang, once ``hang`` is set, until ``release`` is (on the meter's
    own thread only, with ``reader_only``); ``reading`` is set when one hangs."""

    def __init__(self, *args, reader_only=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.hang, self.reader_only = False, reader_only
        self.reading, self.release = threading.Event(), threading.Event()

    def energy_j(self):
        if self.hang and (not self.reader_only or threading.current_thread().name == "greencallbacks-meter"):
            self.reading.set()
            self.release.wait(30)
        return super().energy_j()


def snapshot_from_another_thread(meter, exact=False):
    """A boundary taken on a thread of its own, waited for 5 s: None if it was still waiting."""
    done = []
    boundary = threading.Thread(target=lambda: done.append(meter.snapshot(exact=exact)))
    boundary.start()
    boundary.join(timeout=5)
    return done[0] if done else None


def reader_meter(clock, *sensors, **kwargs):
    """Off-thread reading driven by the test: no thread, ``run_reader`` does the reader's work."""
    meter = make_meter(clock, *sensors, off_thread=True, **kwargs)
    meter._poller.manual = True
    return meter


def run_reader(meter, clock, seconds, dt=0.005):
    for _ in range(round(seconds / dt)):
        meter._poller.step()
        clock.advance(dt)


def test_slow_counter_is_not_read_at_boundaries_but_carried_forward_exactly():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=300.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot()  # nothing read yet: this one reads in place
    assert gpu.reads == 1
    run_reader(meter, clock, 1.0)
    reads = gpu.reads
    second = meter.snapshot()
    assert gpu.reads == reads  # the boundary read nothing
    assert 0 < second.carried_s["gpu0"] <= 0.1  # at most one read interval after the last read
    # Constant power: carrying the last read forward at the instantaneous power is exact.
    assert meter.between(first, second).energy_j == pytest.approx(300.0 * (second.monotonic_s - first.monotonic_s))


def test_cheap_sensors_stay_read_at_the_boundary_next_to_a_slow_one():
    clock = FakeClock()
    gpu, cpu = SlowSensor("gpu0", clock), ScriptedSensor("cpu", clock, kind=Kind.CPU)
    meter = reader_meter(clock, gpu, cpu)
    meter.snapshot()
    run_reader(meter, clock, 0.5)
    gpu_reads, cpu_reads = gpu.reads, cpu.reads
    snapshot = meter.snapshot()
    assert (gpu.reads, cpu.reads) == (gpu_reads, cpu_reads + 1)
    assert "cpu" not in snapshot.carried_s


def test_windows_share_boundaries_so_every_joule_is_billed_once():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=100.0, update_period_s=0.0)
    meter = reader_meter(clock, gpu)
    first = previous = meter.snapshot(exact=True)
    windows = []
    for power in (600.0, 250.0, 40.0, 700.0, 90.0) * 4:
        gpu.set_power(power)
        run_reader(meter, clock, 0.37)
        current = meter.snapshot()
        windows.append(meter.between(previous, current).energy_j)
        previous = current
    run_reader(meter, clock, 0.05)
    last = meter.snapshot(exact=True)
    windows.append(meter.between(previous, last).energy_j)
    assert all(w >= 0 for w in windows)
    assert sum(windows) == pytest.approx(meter.between(first, last).energy_j, rel=1e-12)
    assert meter.between(first, last).energy_j == pytest.approx(gpu.energy_j(), rel=1e-9)  # created with `first`


def test_exact_snapshot_reads_in_place():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock)
    meter = reader_meter(clock, gpu)
    meter.snapshot()
    run_reader(meter, clock, 0.3)
    reads = gpu.reads
    meter.snapshot(exact=True)
    assert gpu.reads == reads + 1


def test_a_stale_read_is_not_carried_forward_the_boundary_reads_instead():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=100.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot()
    run_reader(meter, clock, 0.3)
    clock.advance(5.0)  # the reader stalled (or was stopped): its last read is 5 s old
    reads = gpu.reads
    second = meter.snapshot()
    assert gpu.reads == reads + 1 and "gpu0" not in second.carried_s
    assert meter.between(first, second).energy_j == pytest.approx(100.0 * 5.3, rel=1e-3)


def test_without_instantaneous_power_the_counter_slope_carries_it():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=200.0, instant=False)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot()
    run_reader(meter, clock, 1.0)
    second = meter.snapshot()
    assert second.carried_s["gpu0"] > 0
    assert meter.between(first, second).energy_j == pytest.approx(200.0 * (second.monotonic_s - first.monotonic_s))


def test_a_boundary_carried_forward_states_that_span_in_its_uncertainty():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=500.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot()
    run_reader(meter, clock, 1.0)
    clock.advance(0.15)  # no read for 0.15 s (still recent enough to carry)
    second = meter.snapshot()
    component = meter.between(first, second).components[0]
    assert second.carried_s["gpu0"] == pytest.approx(0.15, abs=0.1)
    assert component.uncertainty_j == pytest.approx(500.0 * second.carried_s["gpu0"])


def test_slow_sensor_failing_on_the_reader_degrades_and_boundaries_stay_continuous():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=100.0)
    estimate = ScriptedSensor("estimate", clock, power_w=50.0, method=Method.ESTIMATED)
    meter = reader_meter(clock, gpu, fallback=lambda s: estimate)
    first = meter.snapshot()
    run_reader(meter, clock, 1.0)
    middle = meter.snapshot()
    gpu.fail_with = SensorError("GPU is lost")
    with pytest.warns(EnergyWarning, match="GPU is lost"):
        run_reader(meter, clock, 0.2)
    assert not meter.channels[0].off_thread  # the fallback is read at boundaries
    clock.advance(1.0)
    last = meter.snapshot()
    assert meter.between(first, middle).energy_j == pytest.approx(100.0, rel=0.01)
    assert 0 <= meter.between(middle, last).energy_j <= 100.0 * 0.2 + 50.0 * 1.2
    assert meter.between(middle, last).components[0].method == "estimated"


def test_a_transient_fault_is_held_and_the_next_good_read_recovers_every_joule():
    """An NVML timeout on one read: the cumulative counter's next read holds the energy of the
    gap, so the GPU is not given up for the rest of the run (it was, at the first fault)."""
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=300.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    gpu.fail_with = SensorError("gpu0: NVML energy counter failed: Timeout", transient=True)
    run_reader(meter, clock, 0.15)  # one or two reads fail, fewer than FAILURES_BEFORE_DEGRADE
    gpu.fail_with = None
    run_reader(meter, clock, 1.0)
    last = meter.snapshot(exact=True)
    window = meter.between(first, last)
    assert window.energy_j == pytest.approx(300.0 * (last.monotonic_s - first.monotonic_s), rel=1e-9)
    assert not meter.channels[0].failed and window.components[0].note == ""


def test_a_transient_fault_that_persists_is_held_until_the_device_answers_again():
    """A timeout lasting 3 s where nothing can replace the sensor (fallback None; on NVML, its
    power reads time out too): it stopped counting the GPU for the rest of the run at the third
    failure (300 J of 1,800). Held and retried, it is counted again when it answers, every joule of
    the gap recovered by the counter; the boundaries meanwhile are carried at its last power, said
    once and labelled, and their windows state the span carried."""
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=300.0, instant=False)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    gpu.fail_with = SensorError("gpu0: NVML energy counter failed: Timeout", transient=True)
    boundaries = [meter.snapshot()]
    with pytest.warns(EnergyWarning, match="has not answered since .*Timeout") as caught:
        for _ in range(6):
            run_reader(meter, clock, 0.5)
            boundaries.append(meter.snapshot())
    assert len([w for w in caught if issubclass(w.category, EnergyWarning)]) == 1
    channel = meter.channels[0]
    assert not channel.failed and "no answer from" in channel.note
    inside = [meter.between(a, b) for a, b in zip(boundaries, boundaries[1:])]
    # Carried at the counter's last slope: each half second billed as 150 J, its span stated.
    assert [w.energy_j for w in inside] == pytest.approx([150.0] * 6, rel=0.01)
    assert inside[-1].uncertainty_j >= 300.0 * 2.5
    gpu.fail_with = None
    run_reader(meter, clock, 1.0)
    last = meter.snapshot(exact=True)
    window = meter.between(first, last)
    assert window.energy_j == pytest.approx(300.0 * (last.monotonic_s - first.monotonic_s), rel=1e-9)
    assert window.components[0].method == "counter"
    assert "no answer for 3" in window.components[0].note and "recovered" in window.components[0].note


def test_a_persistent_transient_fault_switches_to_a_replacement_that_reads():
    """The counter alone keeps timing out while a replacement can read: after TRANSIENT_HOLD_S it
    takes over, and the span from the counter's last read to the switch is bridged, not lost."""
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=300.0)
    sampled = ScriptedSensor("gpu0-sampled", clock, power_w=300.0, method=Method.SAMPLED)
    meter = reader_meter(clock, gpu, fallback=lambda s: sampled)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    gpu.fail_with = SensorError("gpu0: NVML energy counter failed: Timeout", transient=True)
    with pytest.warns(EnergyWarning, match="sampled from now on"):
        run_reader(meter, clock, 0.5 + meter_module.TRANSIENT_HOLD_S)
    clock.advance(1.0)
    last = meter.snapshot()
    window = meter.between(first, last)
    truth = 300.0 * (last.monotonic_s - first.monotonic_s)
    assert window.energy_j == pytest.approx(truth, rel=0.002)
    component = window.components[0]
    assert component.method == "sampled" and "estimated at 300 W" in component.note
    assert component.uncertainty_j >= 0.5 * 300.0 * meter_module.TRANSIENT_HOLD_S  # the bridged span, stated


def test_a_counter_failing_at_a_boundary_read_bridges_the_span_since_its_last_read():
    """A counter read at boundaries (off the reader) answers at the end of epoch 0 and fails for
    good at the end of epoch 1: epoch 1 was billed 0 J, its 10 s lost at the switch. Now it is
    estimated at the power known (the run's mean), labelled, and stated at the estimates' 50 %."""
    clock = FakeClock()
    counter = ScriptedSensor("gpu0", clock, power_w=200.0)
    sampled = ScriptedSensor("gpu0-sampled", clock, power_w=200.0, method=Method.SAMPLED)
    meter = make_meter(clock, counter, fallback=lambda s: sampled)
    start = meter.snapshot()
    clock.advance(10.0)
    middle = meter.snapshot()
    clock.advance(10.0)
    counter.fail_with = SensorError("gpu0: NVML energy counter failed: Not Supported")
    with pytest.warns(EnergyWarning, match="sampled from now on"):
        end = meter.snapshot()
    clock.advance(5.0)
    later = meter.snapshot()
    assert meter.between(start, middle).energy_j == pytest.approx(2000.0)
    epoch = meter.between(middle, end)
    assert epoch.energy_j == pytest.approx(2000.0)
    assert epoch.uncertainty_j >= 0.5 * 2000.0
    assert "10 s before it estimated at 200 W" in epoch.components[0].note
    after = meter.between(end, later)
    assert after.energy_j == pytest.approx(1000.0) and after.uncertainty_j < 0.5 * 2000.0


def test_a_failed_power_sample_ends_the_samples_it_does_not_freeze_them():
    """One instantaneous-power read fails while the GPU idles at 60 W, then it trains at 700 W:
    boundaries were carried at the frozen 60 W for the rest of the run (13 % per phase off)."""
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=60.0)
    meter = reader_meter(clock, gpu)
    meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    gpu.instant = False  # power_now_w fails once ...
    gpu.power_now_w = lambda: (_ for _ in ()).throw(SensorError("field read failed"))
    run_reader(meter, clock, 0.02)
    del gpu.power_now_w  # ... then works again
    gpu.instant = True
    gpu.set_power(700.0)
    run_reader(meter, clock, 1.0)
    errors = []
    for k in range(10):
        a = meter.snapshot()
        run_reader(meter, clock, 0.3 + 0.07 * k)
        b = meter.snapshot()
        errors.append(meter.between(a, b).energy_j / (700.0 * (b.monotonic_s - a.monotonic_s)) - 1)
    assert max(map(abs, errors)) < 0.01, errors
    assert meter.channels[0].samples_power  # one failure does not stop sampling


def test_a_boundary_does_not_wait_for_a_read_in_progress_on_the_reader():
    """The reader is inside a slow read (a GPU in an error state can take seconds) and its last
    read has gone stale: the boundary carries that read forward instead of queueing behind it
    and then reading again itself (3.7 s per boundary with a 2 s read)."""
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=200.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    channel = meter.channels[0]
    assert channel._refresh_lock.acquire()  # the reader thread's read, in progress
    try:
        clock.advance(2.0)
        reads = gpu.reads
        second = snapshot_from_another_thread(meter)
        assert second is not None, "the boundary waited for the reader's read"
        assert gpu.reads == reads  # and read nothing itself
        assert second.carried_s["gpu0"] == pytest.approx(2.0, abs=0.1)
        window = meter.between(first, second)
        assert window.energy_j == pytest.approx(200.0 * (second.monotonic_s - first.monotonic_s), rel=1e-6)
        assert window.components[0].uncertainty_j >= 200.0 * 2.0 * 0.99  # the carried span, stated
    finally:
        channel._refresh_lock.release()


def test_an_exact_boundary_does_not_wait_for_a_hung_read_beyond_its_limit(monkeypatch):
    """The run's last boundary reads in place; the reader's read has hung (a GPU off the bus): it
    waited for that read as long as it hung (12 s in a Lightning fit, for ever for a read that
    never returns). Past EXACT_READ_WAIT_S it carries the latest read forward, and says so."""
    import greencallbacks.channel as channel_module

    monkeypatch.setattr(channel_module, "EXACT_READ_WAIT_S", 0.05)
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=200.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    channel = meter.channels[0]
    assert channel._refresh_lock.acquire()  # the reader's read, hung until the end of this test
    try:
        clock.advance(2.0)
        last = snapshot_from_another_thread(meter, exact=True)
        assert last is not None, "the last boundary waited for the hung read"
        assert last.carried_s["gpu0"] == pytest.approx(2.0, abs=0.1)
        window = meter.between(first, last)
        assert window.energy_j == pytest.approx(200.0 * (last.monotonic_s - first.monotonic_s), rel=1e-6)
        assert window.components[0].uncertainty_j >= 200.0 * 2.0 * 0.99
    finally:
        channel._refresh_lock.release()


def test_stopping_does_not_wait_for_a_read_hung_on_the_background_thread(monkeypatch):
    """The run's stop (where a Ctrl-C is held) waited 5 s for a meter thread stuck in a hung read.
    It waits STOP_WAIT_S; the thread, a daemon, ends with its read."""
    import greencallbacks.channel as channel_module

    monkeypatch.setattr(channel_module, "STOP_WAIT_S", 0.05)
    gpu = HangingSensor("gpu0", time.monotonic, power_w=100.0, reader_only=True)
    meter = make_meter(time.monotonic, gpu, off_thread=True)
    meter.snapshot(exact=True)  # starts the background thread
    gpu.hang = True
    try:
        assert gpu.reading.wait(10), "the background thread never read"
        stopping = threading.Thread(target=meter.stop_sampling)
        stopping.start()
        stopping.join(timeout=3)
        assert not stopping.is_alive(), "stopping waited for the hung read"
    finally:
        gpu.release.set()
        meter.close()


def test_an_exact_boundary_whose_own_read_hangs_carries_the_latest_read_forward(monkeypatch):
    """The reader was not inside a read, so the run's last boundary read the counter itself, and
    that read hung (3 s a read at the end of a fit): the training thread waited for all of it."""
    import greencallbacks.channel as channel_module

    monkeypatch.setattr(channel_module, "EXACT_READ_WAIT_S", 0.05)
    clock = FakeClock()
    gpu = HangingSensor("gpu0", clock, power_w=200.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    gpu.hang = True
    try:
        clock.advance(0.5)
        last = snapshot_from_another_thread(meter, exact=True)
        assert last is not None, "the boundary waited for its own hung read"
        window = meter.between(first, last)
        assert window.energy_j == pytest.approx(200.0 * (last.monotonic_s - first.monotonic_s), rel=1e-6)
        assert last.carried_s["gpu0"] >= 0.5  # the span carried, in its uncertainty
    finally:
        gpu.release.set()


def test_a_runs_first_read_made_after_its_instant_is_carried_back_to_it():
    """NVML reads of 200 ms at the run's first boundary: its value held energy from after the
    boundary's instant, with no power sample to carry it back, so the first window read 0 J and
    the next one took its energy."""
    from greencallbacks.sensors.nvml import find_nvml_gpus
    from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid

    clock = FakeClock()
    latency = {"s": 0.2}
    nvml = FakeNvml(clock, counter_latency=lambda: latency["s"])
    nvml.add_gpu(gpu_uuid(0), power_w=200.0)
    meter = reader_meter(clock, *find_nvml_gpus(pynvml=nvml, environ={}, clock=clock).sensors)
    first = meter.snapshot(exact=True)
    latency["s"] = 0.003
    run_reader(meter, clock, 1.0)
    second = meter.snapshot()
    [gpu] = meter.between(first, second).components
    truth = 200.0 * (second.monotonic_s - first.monotonic_s)
    assert abs(gpu.energy_j - truth) <= gpu.uncertainty_j
    assert gpu.energy_j == pytest.approx(truth, rel=0.06)  # within half an update period of 200 W


def test_a_read_in_place_that_ends_after_the_boundary_is_carried_back_to_it():
    """An exact boundary whose read finished 0.6 s after the boundary's instant (it queued behind
    a slow read): the value is carried back to the instant with the power samples, not billed at
    it whole (900 J for a 0.5 s window at 300 W)."""
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=300.0)
    meter = reader_meter(clock, gpu)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 1.0)
    channel = meter.channels[0]
    real_refresh = channel._refresh

    def late_refresh():  # the read completes 0.6 s after the boundary stamped its time
        clock.advance(0.6)
        return real_refresh()

    channel._refresh = late_refresh
    last = meter.snapshot(exact=True)
    window = meter.between(first, last)
    assert window.energy_j == pytest.approx(300.0 * (last.monotonic_s - first.monotonic_s), rel=1e-3)
    assert last.carried_s["gpu0"] == pytest.approx(0.6, abs=0.05)


def test_a_window_cut_to_0_joules_in_the_first_update_period_states_the_devices_power():
    """A measurement's first boundaries on a counter that steps every 100 ms: one carried forward
    past the energy the next could show (the update phase not yet found), and the window after it
    read 0 J, stated ± 0 J (its power taken from counter reads that had not moved yet) while the
    GPU drew 200 W. It is stated at the sampled power, one update period's worth."""
    from greencallbacks.sensors.nvml import find_nvml_gpus
    from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid

    clock = FakeClock()
    nvml = FakeNvml(clock)
    nvml.add_gpu(gpu_uuid(0), power_w=200.0)
    meter = reader_meter(clock, *find_nvml_gpus(pynvml=nvml, environ={}, clock=clock).sensors)
    meter.snapshot(exact=True)
    run_reader(meter, clock, 0.02)  # power sampled, the counter not yet stepped
    meter.channels[0]._boundary_j += 10.0  # this boundary carried past what the next can show
    start = meter.snapshot()
    run_reader(meter, clock, 0.02)
    [gpu] = meter.between(start, meter.snapshot()).components
    assert gpu.energy_j == 0.0
    assert gpu.uncertainty_j >= 0.1 * 200.0 * 0.99


def test_reads_slower_than_the_update_period_still_move_the_anchor():
    """Each NVML read takes 150 ms, longer than the counter's 100 ms update period, so every read
    straddles an update: the anchor was never moved, went stale, and every boundary read the
    counter in place on the training thread."""
    from greencallbacks.sensors.nvml import find_nvml_gpus
    from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid

    clock = FakeClock()
    latency, reads = {"s": 0.003}, []
    nvml = FakeNvml(clock, counter_latency=lambda: reads.append(1) or latency["s"])
    nvml.add_gpu(gpu_uuid(0), power_w=200.0)
    meter = reader_meter(clock, *find_nvml_gpus(pynvml=nvml, environ={}, clock=clock).sensors)
    first = meter.snapshot(exact=True)
    run_reader(meter, clock, 2.0)  # fast reads: the reader finds the update phase
    channel = meter.channels[0]
    assert channel._phase is not None
    latency["s"] = 0.15
    run_reader(meter, clock, 1.0)
    calls = len(reads)
    for _ in range(5):
        assert channel.estimate(clock()) is not None  # a recent anchor: nothing to read in place
        meter.snapshot()
        run_reader(meter, clock, 0.3)
    last = meter.snapshot(exact=True)
    assert meter.between(first, last).energy_j == pytest.approx(200.0 * (last.monotonic_s - first.monotonic_s), rel=1e-3)
    assert len(reads) - calls <= 5 * 0.3 / 0.15 + 2  # the reader's reads only, and the exact one


def test_off_thread_defaults_to_the_real_clock_and_is_validated():
    clock = FakeClock()
    assert Meter([SlowSensor("gpu0", clock)], fallback=None).off_thread is True
    assert Meter([SlowSensor("gpu0", clock)], fallback=None, clock=clock).off_thread is False
    with pytest.raises(ValueError, match="off_thread must be True, False or None"):
        Meter([], off_thread="yes")


def test_an_injected_clock_reads_slow_sensors_at_the_boundary_as_before():
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock)
    meter = make_meter(clock, gpu)
    meter.snapshot()
    meter.snapshot()
    assert gpu.reads == 2 and not meter.sampling


def test_reader_thread_reads_slow_counters_and_stops_cleanly():
    sensor = SlowSensor("gpu0", time.monotonic, power_w=100.0)
    meter = Meter([sensor], fallback=None)  # real clock: off-thread by default
    meter.snapshot()
    assert meter.sampling
    deadline = time.monotonic() + 5
    while sensor.reads < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sensor.reads >= 4  # read by the thread, with no boundary
    meter.stop_sampling()
    assert not [t for t in threading.enumerate() if t.name == "greencallbacks-meter"]
    meter.close()


def test_a_counter_that_moves_continuously_is_not_given_a_phase():
    """A sensor whose stated update period is not real (its counter moves between any two reads):
    the reader finds no phase to lock and carries each read from when it was taken."""
    clock = FakeClock()
    gpu = SlowSensor("gpu0", clock, power_w=300.0, update_period_s=0.1)
    meter = reader_meter(clock, gpu)
    previous = meter.snapshot()
    for power in (200.0, 600.0) * 3:
        gpu.set_power(power)
        run_reader(meter, clock, 0.7)
        current = meter.snapshot()
        assert meter.between(previous, current).energy_j == pytest.approx(power * 0.7, rel=1e-6)
        previous = current
    assert meter.channels[0]._phase is None


def test_peek_reads_no_slow_counter_and_does_not_synchronise():
    clock = FakeClock()
    gpu, cpu = SlowSensor("gpu0", clock, power_w=100.0), ScriptedSensor("cpu", clock, power_w=10.0, kind=Kind.CPU)
    syncs = []
    meter = reader_meter(clock, gpu, cpu, sync=lambda: syncs.append(1))
    first = meter.snapshot()
    run_reader(meter, clock, 0.5)
    gpu_reads, sync_calls = gpu.reads, len(syncs)
    live = meter.peek()
    assert gpu.reads == gpu_reads and len(syncs) == sync_calls
    # The slow channel gives its latest read (at most one reader interval old), never more than
    # is there: cheap channels are read in place.
    gpu_live = live.energy_j["gpu0"] - first.energy_j["gpu0"]
    assert 100.0 * (0.5 - 0.2) <= gpu_live <= 100.0 * 0.5 + 1e-9
    assert live.energy_j["cpu"] - first.energy_j["cpu"] == pytest.approx(10.0 * 0.5)
    clock.advance(1.0)  # no read for a second: the slow channel still gives that read, not more
    held = meter.peek()
    assert held.energy_j["gpu0"] == live.energy_j["gpu0"] and gpu.reads == gpu_reads
    # Peeking bills nothing: the next window still starts at the last snapshot, and never ends
    # below what a peek showed (live figures stay under the next logged total).
    after = meter.snapshot()
    assert after.energy_j["gpu0"] >= held.energy_j["gpu0"]
    assert meter.between(first, after).energy_j == pytest.approx(110.0 * 1.5)


def test_peek_does_not_wait_for_a_channel_the_reader_holds():
    """A logging step's live figure while the meter's thread polls a channel (holding it): the
    channel's last value at once, not a wait for the poll; the next snapshot counts on from it."""
    clock = FakeClock()
    cpu = ScriptedSensor("cpu", clock, power_w=10.0, kind=Kind.CPU)
    meter = make_meter(clock, cpu)
    first = meter.snapshot()
    clock.advance(1.0)
    channel = meter.channels[0]
    held = threading.Event()
    release = threading.Event()

    def poll_holding_the_channel():
        with channel._lock:
            held.set()
            release.wait(5.0)

    reader = threading.Thread(target=poll_holding_the_channel)
    reader.start()
    held.wait(5.0)
    try:
        live = meter.peek()  # (read in place, it would wait for the 5 s above)
        assert live.energy_j["cpu"] == first.energy_j["cpu"]
        assert reader.is_alive()
    finally:
        release.set()
        reader.join()
    assert meter.peek().energy_j["cpu"] - first.energy_j["cpu"] == pytest.approx(10.0)
    assert meter.between(first, meter.snapshot()).energy_j == pytest.approx(10.0)


class ZoneReadByPolls(ScriptedSensor):
    """A counter the meter's thread polls (a RAPL zone, a sampled GPU), returning what it read."""

    poll_interval_s = 1.0

    def poll(self):
        super().poll()  # raises while told to fail
        self._advance()
        return self._energy


def test_a_polled_sensor_failing_mid_phase_keeps_the_energy_to_its_last_poll():
    """A RAPL package (or a sampled GPU) failing 50 s into a 60 s epoch recorded 0 J for that
    epoch: the meter kept the energy of the last boundary, not of the polls since."""
    clock = FakeClock()
    zone = ZoneReadByPolls("cpu-package-0", clock, power_w=300.0, kind=Kind.CPU)
    meter = make_meter(clock, zone)
    meter._poller.manual = True
    first = meter.snapshot()
    for _ in range(50):
        clock.advance(1.0)
        meter._poller.step()
    zone.fail_with = SensorError("cpu-package-0: cannot read energy_uj: [Errno 5] Input/output error")
    with pytest.warns(EnergyWarning, match="no longer counted"):
        for _ in range(10):
            clock.advance(1.0)
            meter._poller.step()
        second = meter.snapshot()
    assert meter.between(first, second).energy_j == pytest.approx(300.0 * 50, rel=1e-9)


# ----------------------------------------------------------------- the process's wall clock
@pytest.mark.parametrize("step_s", [-3600.0, 86400.0])
def test_the_meters_of_one_process_stamp_alike_across_a_wall_clock_step(monkeypatch, step_s):
    """``fit`` then ``test`` of one run build a meter each. Each read the wall clock anew: a step
    back of an hour between them stamped the test an hour before the fit's end (and priced it at
    that hour), a day forward a day ahead."""
    system = SystemClock(monkeypatch, unix_s=1.7e9)
    fit = Meter([], fallback=None)  # default clocks, as the adapters build it
    system.advance(5.0)
    fit_end = fit.snapshot().unix_s
    fit.close()
    system.step(step_s)
    system.advance(1.0)
    test = Meter([], fallback=None)
    assert test.snapshot().unix_s == pytest.approx(fit_end + 1.0, abs=1e-6)
    assert fit_end == pytest.approx(1.7e9 + 5.0, abs=1e-6)  # the wall clock as first read, advanced
    assert test.snapshot().unix_s == meter_module.unix_now()  # one clock for all of the process
    test.close()


def test_the_process_clock_can_be_anchored_at_a_given_time(monkeypatch):
    SystemClock(monkeypatch)
    meter_module.reset_unix_clock(1.8e9)
    meter = Meter([], fallback=None)
    assert meter.snapshot().unix_s == meter_module.unix_now() == 1.8e9
    meter.close()
    with pytest.raises(ValueError, match="unix seconds"):
        meter_module.reset_unix_clock(float("nan"))
