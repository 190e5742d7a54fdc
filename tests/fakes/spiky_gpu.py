"""A meter on one fake H100 (``fake_pynvml``, its read latency) whose load switches between 50 and
700 W, on a fake clock, its counter read off the training thread by the meter's reader."""

from __future__ import annotations

import random

from greencallbacks.meter import Meter
from greencallbacks.sensors.nvml import find_nvml_gpus
from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid, h100_counter_latency
from tests.fakes.scripted import FakeClock, polling


def spiky_gpu(seed: int, instant_field: bool = True, levels: tuple[float, ...] = (50.0, 700.0)):
    """(clock, nvml, gpu, meter, run): ``run(seconds)`` advances the clock, the reader stepped every
    10 ms, while the GPU switches between 50 and 700 W (each 20 ms, with a chance of 0.3), or the
    power ``levels`` given (one: a steady load). ``instant_field=False``: a driver without the
    instantaneous-power field."""
    rng = random.Random(seed)
    clock = FakeClock(1000.0 + rng.random())
    nvml = FakeNvml(clock, counter_latency=h100_counter_latency(seed))
    gpu = nvml.add_gpu(gpu_uuid(0), power_w=levels[-1])
    gpu.instant_supported = instant_field
    (sensor,) = find_nvml_gpus([0], environ={}, pynvml=nvml, clock=clock).sensors
    meter = Meter([sensor], clock=clock, wall_clock=lambda: clock() + 1.7e9, off_thread=True)
    advance = polling(meter, clock, step_s=0.01)

    def run(seconds: float) -> None:
        for _ in range(round(seconds / 0.02)):
            advance(0.02)
            if rng.random() < 0.3:
                gpu.set_power(rng.choice(levels))

    return clock, nvml, gpu, meter, run
