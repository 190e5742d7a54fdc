"""What finding a quantised counter's update phase costs in counter reads (each NVML energy read
costs ~3.4 ms of CPU in the driver), with the precision it finds it at.

On an H200 the reader read the counter ~350 times in a run's first 4 s, and ~160 more times at
each refresh of the phase (every PHASE_REFRESH_S), reading back to back for whole update periods.
The fake GPU (tests.fakes.fake_pynvml) steps every 100 ms from its creation, or from its restart,
and each read takes the H100's latency on the fake clock; the reader is stepped as its thread runs.
"""

import math
import random

import pytest

from greencallbacks.meter import PHASE_PRECISION_S, PHASE_REFRESH_S, Meter, _Channel
from greencallbacks.sensors.nvml import COUNTER_UPDATE_PERIOD_S, NvmlGpuSensor
from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid, h100_counter_latency
from tests.fakes.scripted import FakeClock, ScriptedSensor

PERIOD = COUNTER_UPDATE_PERIOD_S
COUNTER_READ = "nvmlDeviceGetTotalEnergyConsumption"


class ValueAtTheEndNvml(FakeNvml):
    """Where inside a read NVML takes the counter's value is not known: here at its end."""

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        gpu = self._physical(handle, COUNTER_READ)
        self._sleep(self.counter_latency())
        return gpu.counter_mj()


def metered_gpu(seed, nvml_type=FakeNvml):
    """One fake GPU (H100 read latency) on a meter whose reader the test steps; the counter's
    phase drawn from ``seed``. Returns (clock, nvml, gpu, meter)."""
    clock = FakeClock(start=1000.0)
    nvml = nvml_type(clock, counter_latency=h100_counter_latency(seed))
    gpu = nvml.add_gpu(gpu_uuid(0), power_w=300.0)
    nvml.nvmlInit()
    clock.advance(0.5 + PERIOD * random.Random(seed).random())
    sensor = NvmlGpuSensor(gpu.handle, index=0, pynvml=nvml, clock=clock)
    meter = Meter([sensor], fallback=None, clock=clock, off_thread=True)
    meter._poller.manual = True
    return clock, nvml, gpu, meter


def run_as_the_reader_thread(meter, clock, seconds, late_s=None):
    """The reader thread's loop (``_Poller._run``) on the fake clock: a step, then its wait;
    ``late_s``: a draw of how late it wakes (waiting for the GIL)."""
    end = clock() + seconds
    while clock() < end:
        wait = meter._poller.step()
        clock.advance(max(0.001, wait) + (late_s() if late_s else 0.0))


def phase_error_s(channel, origin):
    offset = (channel._phase - origin) % PERIOD
    return min(offset, PERIOD - offset)


@pytest.mark.parametrize("seed", range(6))
def test_the_first_search_finds_the_phase_with_a_quarter_of_the_reads(seed):
    """Reading back to back for 20 whole periods, the search took 200-380 reads in a run's first
    4 s (over 100 phases; 360 on average). Reading back to back only around where the next step is
    due, it takes 70-110 (92 on average), 20 of them the reads at the update period once it is
    found, and finds the phase as precisely (0.24 ms off on average, under 1 ms at every phase)."""
    clock, nvml, gpu, meter = metered_gpu(seed)
    meter.snapshot(exact=True)
    run_as_the_reader_thread(meter, clock, 4.0)
    channel = meter.channels[0]
    assert channel._search is None and channel._phase is not None
    assert phase_error_s(channel, gpu.created_at) < PHASE_PRECISION_S
    assert nvml.calls[COUNTER_READ] < 150


@pytest.mark.parametrize("seed", range(3))
def test_a_refresh_of_the_phase_costs_few_reads(seed):
    """Past the first search the reader reads once per update period (600 reads a minute); each
    refresh of the phase (PHASE_REFRESH_S) read back to back for another ~2 s: ~160 reads more.
    Starting from the phase known, it now costs ~45 (25-60), and the phase stays as precise."""
    clock, nvml, gpu, meter = metered_gpu(seed)
    meter.snapshot(exact=True)
    run_as_the_reader_thread(meter, clock, 4.0)
    channel = meter.channels[0]
    locked_at, reads = channel._locked_at, nvml.calls[COUNTER_READ]
    seconds = PHASE_REFRESH_S + 2.0  # the refresh begins PHASE_REFRESH_S after the lock, ~2 s in
    run_as_the_reader_thread(meter, clock, seconds)
    assert channel._locked_at > locked_at and channel._search is None  # refreshed, and done
    assert phase_error_s(channel, gpu.created_at) < PHASE_PRECISION_S
    assert nvml.calls[COUNTER_READ] - reads < seconds / PERIOD + 100


@pytest.mark.parametrize("seed", [1, 7])
def test_a_counter_restarted_mid_search_is_found_at_its_new_phase_at_little_cost(seed):
    """The counter restarts at another phase once the search has seen steps: the zone where the
    next step was due passes without one, twice; the reads follow each other everywhere until the
    next step, which contradicts the window, and the search starts again from that step. (Read
    back to back throughout, the search took ~350 reads to find the new phase.) A step seen from
    a read a period before the zone does not count: it narrowed the window it no longer held to
    a sliver, which passed for a precise phase 46 ms off (seed 1)."""
    clock, nvml, gpu, meter = metered_gpu(seed)
    meter.snapshot(exact=True)
    channel = meter.channels[0]
    while channel._search is None or channel._search["steps"] < 3:
        run_as_the_reader_thread(meter, clock, 0.001)
    clock.advance(0.0437)
    gpu.reset_counter()  # steps now at its restart + k x 100 ms
    reads = nvml.calls[COUNTER_READ]
    run_as_the_reader_thread(meter, clock, 4.0)
    assert channel._search is None and channel._phase is not None
    assert phase_error_s(channel, gpu._counter_origin_t) < PHASE_PRECISION_S
    assert nvml.calls[COUNTER_READ] - reads < 160


@pytest.mark.parametrize("seed", [2, 7])
def test_a_wrong_window_never_stalls_the_search(seed):
    """A window that holds no step (here put 30 ms off by hand, as a restart would leave it): the
    zones around it see none, and the search does not wait for one forever: it finds the phase."""
    clock, nvml, gpu, meter = metered_gpu(seed)
    meter.snapshot(exact=True)
    channel = meter.channels[0]
    while channel._search is None or channel._search["steps"] < 2:
        run_as_the_reader_thread(meter, clock, 0.001)
    search = channel._search
    for key in ("window", "zone"):  # the window, and where the next step is looked for
        if search.get(key) is not None:
            search[key] = (search[key][0] + 0.03, search[key][1] + 0.03)
    search["steps"] = 1
    reads = nvml.calls[COUNTER_READ]
    run_as_the_reader_thread(meter, clock, 4.0)
    assert channel._search is None
    assert phase_error_s(channel, gpu.created_at) < PHASE_PRECISION_S
    assert nvml.calls[COUNTER_READ] - reads < 160


@pytest.mark.parametrize("seed", range(4))
def test_a_reader_late_by_the_gil_with_values_taken_at_a_reads_end_finds_the_phase(seed):
    """The reader wakes up to 5 ms late (the GIL's switch interval, the training thread running
    Python), and NVML takes the value at the end of its read: a zone's first read then often sees
    the step already. Each such zone is tried again wider, and a run of them is not taken for a
    counter without a steady period: the phase is found, as precisely as reading back to back
    found it (up to ~2.5 ms off in this case, where a read's end bounds the step), and cheaply."""
    clock, nvml, gpu, meter = metered_gpu(seed, ValueAtTheEndNvml)
    late = random.Random(seed).random
    meter.snapshot(exact=True)
    run_as_the_reader_thread(meter, clock, 4.0, late_s=lambda: 0.005 * late())
    channel = meter.channels[0]
    assert channel._search is None and channel._search_again_at == -math.inf  # found, never given up
    assert phase_error_s(channel, gpu.created_at) < 0.003
    assert nvml.calls[COUNTER_READ] < 150


def test_the_next_zone_after_a_step_is_the_next_periods():
    """The read that saw a step often ends the window (its ``hi``): in floating point, ``hi`` plus
    whole periods fell a hair short of that read's end for 40 % of values, and the zone looked
    for next was the one just passed, missed."""
    hi = 1000.0631068218877
    t = hi + 8 * PERIOD  # the end of the read that saw the step 8 periods on
    start, end = _Channel._zone(hi - 0.004, hi, t, PERIOD, 0.005)
    assert t < start < t + PERIOD and end - start == pytest.approx(0.014)


class LatentCounter(ScriptedSensor):
    """A counter read with the H100's latency (its value taken mid-read) that moves continuously,
    or steps every update period while ``quantised``."""

    off_thread = True

    def __init__(self, clock, quantised):
        super().__init__("gpu0", clock, power_w=300.0, update_period_s=PERIOD)
        self.quantised, self.origin = quantised, clock()
        self._latency = h100_counter_latency(5)

    def energy_j(self):
        latency = self._latency()
        self.clock.advance(latency / 2)
        self.reads += 1
        elapsed = self.clock() - self.origin
        if self.quantised:
            elapsed = math.floor(elapsed / PERIOD) * PERIOD
        self.clock.advance(latency / 2)
        return self.power_w * elapsed

    def power_now_w(self):
        return self.power_w


def latent_meter(clock, sensor):
    meter = Meter([sensor], fallback=None, clock=clock, off_thread=True)
    meter._poller.manual = True
    return meter


def test_a_counter_that_moves_continuously_is_still_found_so():
    """No two close reads without a step between: it has no phase, whatever the reads' latency."""
    clock = FakeClock(start=1000.0)
    meter = latent_meter(clock, LatentCounter(clock, quantised=False))
    first = meter.snapshot(exact=True)
    run_as_the_reader_thread(meter, clock, 2.0)
    channel = meter.channels[0]
    assert channel._continuous and channel._phase is None
    last = meter.snapshot(exact=True)
    assert meter.between(first, last).energy_j == pytest.approx(300.0 * (last.monotonic_s - first.monotonic_s), rel=1e-3)


def test_a_counter_that_turns_continuous_is_found_so_by_a_later_search():
    """A refresh reads only around the phase known, but needs two close reads without a step, as
    every search does: a counter moving continuously since is not given a phase."""
    clock = FakeClock(start=1000.0)
    counter = LatentCounter(clock, quantised=True)
    meter = latent_meter(clock, counter)
    meter.snapshot(exact=True)
    run_as_the_reader_thread(meter, clock, 3.0)
    channel = meter.channels[0]
    assert channel._phase is not None and not channel._continuous
    counter.quantised = False
    run_as_the_reader_thread(meter, clock, PHASE_REFRESH_S + 3.0)
    assert channel._phase is None and channel._continuous
