"""Step values (``Tracker.live``, through ``Meter.peek``) only look: the records are the same, to the
bit, with or without them.

A channel read on the training thread is read in place by a peek. Where that read adds a power
sample to the integral it returns (a GPU read by sampled power: no energy counter, or one that
failed mid-run; the RAM estimate), a step value moved the records: the integral took the peeks'
samples too. A GPU whose counter failed 0.3 s into an epoch, its power switching between 50 and
700 W, recorded 455.0 J for the epoch with a step value every 30 ms, 445.2 J without.

The fake NVML of ``tests/fakes/fake_pynvml.py`` on a fake clock, its reader stepped every 10 ms.
"""

from __future__ import annotations

import warnings

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks.sensors.estimate import RamEstimateSensor
from greencallbacks.sensors.nvml import find_nvml_gpus
from greencallbacks.tracker import Tracker
from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid, h100_counter_latency
from tests.fakes.scripted import FakeClock, polling

GB = 2**30


def _run(log_steps: bool, counter: str, ram: bool) -> tuple[list, list[float]]:
    """One epoch of 40 steps of 30 ms, a step value after each where ``log_steps``; each record's
    energy by component, and the values logged (J: the step values, then the epoch's total).
    ``counter``: "yes", "fails" (0.3 s in: read on by sampled power) or "none"."""
    clock = FakeClock(1000.0)
    nvml = FakeNvml(clock, counter_latency=h100_counter_latency(0))
    gpu = nvml.add_gpu(gpu_uuid(0), power_w=300.0)
    gpu.counter_supported = counter != "none"
    sensors = list(find_nvml_gpus([0], environ={}, pynvml=nvml, clock=clock).sensors)
    memory = [8 * GB]
    if ram:
        sensors.append(RamEstimateSensor(0.37, memory_bytes=lambda: memory[0], clock=clock))
    meter = Meter(sensors, clock=clock, wall_clock=lambda: clock() + 1.7e9, off_thread=True)
    advance = polling(meter, clock, step_s=0.01)
    tracker = Tracker(carbon=Carbon(intensity=300.0, pue=1.0))
    tracker.start(meter)
    tracker.begin("train", 0)
    logged = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EnergyWarning)  # (the counter's failure, said once)
        for step in range(40):
            advance(0.03)
            gpu.set_power(700.0 if step % 2 else 50.0)
            memory[0] += GB  # (grown fast, so that each sample's trapezoid shows)
            if step == 10 and counter == "fails":
                gpu.counter_supported = False  # the driver stops reporting it: read on by sampled power
            if log_steps:
                logged.append(tracker.live()["energy_kwh_total"] * 3.6e6)
    tracker.end("train")
    logged.append(tracker.metrics("train")["energy_kwh_total"] * 3.6e6)
    records = [(r.phase, {c["name"]: c["energy_j"] for c in r.components}) for r in tracker.records]
    tracker.finish()
    return records, logged


@pytest.mark.parametrize("counter", ["fails", "none"])
def test_a_gpu_read_by_sampled_power_records_the_same_with_step_values(counter):
    records, logged = _run(True, counter, ram=False)
    assert records == _run(False, counter, ram=False)[0]
    # The step values give the last power sample's integral (polled every 50 ms): never back, never
    # above the epoch's total, and at most a poll (35 J at 700 W) below it at the last step.
    assert all(later >= earlier for earlier, later in zip(logged, logged[1:])), logged
    assert logged[-1] - logged[-2] <= 0.05 * 700.0


def test_the_ram_estimate_records_the_same_with_step_values():
    (with_steps, _), (without, _) = _run(True, "yes", ram=True), _run(False, "yes", ram=True)
    assert [(phase, energy["ram"]) for phase, energy in with_steps] == [(phase, energy["ram"]) for phase, energy in without]
