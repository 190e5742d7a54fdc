"""A share of a GPU (a MIG instance of an NVIDIA GPU, one die of a two-die AMD board) is degraded
as a whole GPU is.

Its energy counter failing mid-run while the GPU's power reads work, it is read on by sampling
that power, billed the same share (``discover.fallback_for``). It stopped counting instead: the
meter's fallback knew only whole GPUs, so a MIG instance whose counter turned NOT_SUPPORTED (a
driver update) was billed 1,106 J of 4,200 J over 6 s at 700 W, its later records labelled
"stopped counting" and the run's totals a lower bound. And where it is read by sampling, an
outage is bridged and stated as estimated, as a sampled GPU's is.
"""

from __future__ import annotations

import warnings

import pytest

from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks.sensors import amd as amd_module
from greencallbacks.sensors import nvml as nvml_module
from greencallbacks.sensors.amd import find_amd_gpus
from greencallbacks.sensors.nvml import find_nvml_gpus
from tests.fakes.fake_amdsmi import FakeAmdSmi
from tests.fakes import fake_pynvml as fp
from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid
from tests.fakes.scripted import FakeClock, polling

MIG = "MIG-aaaaaaaa-0000-1111-2222-333333333333"
POWER_W = 700.0


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    # Each share is said once per process; each test is a process of its own here.
    monkeypatch.setattr(nvml_module, "_warned_shares", set())
    monkeypatch.setattr(amd_module, "_warned_shares", set())


def mig_instance(clock):
    """A MIG instance of 3 of an H100's 7 slices: (its sensors, what turns its counter off)."""
    nvml = FakeNvml(clock)
    gpu = nvml.add_gpu(gpu_uuid(0), power_w=POWER_W)
    gpu.add_mig_instance(MIG, slices=3)
    return find_nvml_gpus(pynvml=nvml, environ={"CUDA_VISIBLE_DEVICES": MIG}, clock=clock).sensors, gpu, 3 / 7


def amd_die(clock):
    """The first die of an MI250X, of two: billed half the board."""
    smi = FakeAmdSmi(clock)
    board = smi.mi250x(power_w=POWER_W)
    return find_amd_gpus(environ={"HIP_VISIBLE_DEVICES": "0"}, amdsmi=smi, clock=clock).sensors, board, 0.5


@pytest.mark.parametrize("share_of", [mig_instance, amd_die], ids=["nvidia-mig", "amd-die"])
def test_a_gpu_shares_counter_failing_while_its_power_reads_is_read_on_by_sampling_the_same_share(share_of):
    clock = FakeClock(start=1000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EnergyWarning)  # the share, said at discovery
        sensors, device, share = share_of(clock)
    meter = Meter(sensors, clock=clock, wall_clock=lambda: clock() + 1.7e9, off_thread=True)
    run = polling(meter, clock)

    first = meter.snapshot(exact=True)
    run(1.5)
    device.counter_supported = False  # a driver update: NOT_SUPPORTED from now on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(4.5)
        last = meter.snapshot()
    meter.close()
    said = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
    assert len(said) == 1 and "sampled from now on" in said[0], said
    [component] = meter.between(first, last).components
    # One counter update (0.1 s) at most is estimated at the switch.
    assert component.energy_j == pytest.approx(share * POWER_W * 6.0, abs=share * POWER_W * 0.1)
    assert component.method == "apportioned" and not meter.channels[0].failed
    assert component.note.startswith("counter until ") and "; sampled since" in component.note
    # Still billed its share with the share's bound (the truth lies between none and all of the device).
    assert component.uncertainty_j >= (1 - share) / share * component.energy_j * 0.99


def test_an_outage_of_a_share_read_by_sampling_is_bridged_and_stated_as_estimated():
    """A MIG instance of a GPU without an energy counter (its power sampled) whose NVML calls time
    out for 2 s: the energy over the outage is the integral between the samples either side, an
    estimate. It was called "the counter's next read recovered the span", and not counted in the
    window's estimated part (bridged 0 J against a plain GPU's 1,435 J)."""
    clock = FakeClock(start=1000.0)
    nvml = FakeNvml(clock)
    gpu = nvml.add_gpu(gpu_uuid(0), power_w=POWER_W)
    gpu.add_mig_instance(MIG, slices=3)
    gpu.counter_supported = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sensors = find_nvml_gpus(pynvml=nvml, environ={"CUDA_VISIBLE_DEVICES": MIG}, clock=clock).sensors
        meter = Meter(sensors, clock=clock, wall_clock=lambda: clock() + 1.7e9)
        meter._poller.manual = True

        def run(seconds):
            for _ in range(round(seconds / 0.01)):
                clock.advance(0.01)
                meter._poller.step()

        first = meter.snapshot()
        run(1.0)
        gpu.error_code = fp.NVML_ERROR_TIMEOUT
        run(2.0)
        gpu.error_code = None
        run(1.0)
        last = meter.snapshot()
    meter.close()
    said = [str(w.message) for w in caught if "has not answered" in str(w.message)]
    assert len(said) == 1 and "bridges the span" in said[0], said
    [component] = meter.between(first, last).components
    assert component.energy_j == pytest.approx(3 / 7 * POWER_W * 4.0, rel=0.01)
    assert "bridged between its last and next power sample" in component.note
    assert meter.channels[0].bridged_j == pytest.approx(3 / 7 * POWER_W * 2.0, rel=0.05)
