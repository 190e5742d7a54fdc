"""On a real NVIDIA GPU: does the meter agree with the hardware, and what does a boundary read cost?

1. A 5 s matmul load. Energy from the NVML total-energy counter (what the meter reads) against
   instantaneous power (NVML_FI_DEV_POWER_INSTANT) sampled every ~2 ms and integrated, and
   against the 1-second averaged power (nvmlDeviceGetPowerUsage) integrated the same way.
2. The same window measured through greencallbacks' Meter (counter sensor) and its sampled
   sensor (instantaneous power integrated by the background thread).
3. The cost of one boundary read: the raw counter call, the sensor read, a whole
   Meter.snapshot() with torch.cuda.synchronize().

Usage: python benchmarks/gpu_nvml_check.py [--seconds 5] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import pynvml
    import torch

    from greencallbacks.meter import Meter
    from greencallbacks.sensors.nvml import find_nvml_gpus

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    name = pynvml.nvmlDeviceGetName(handle)
    out: dict = {"gpu": name if isinstance(name, str) else name.decode(), "driver": pynvml.nvmlSystemGetDriverVersion()}

    def instant_w() -> float:
        (value,) = pynvml.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])
        return value.value.uiVal / 1000.0

    # --- boundary-read costs -------------------------------------------------------------
    def timed(fn, n=200):
        costs = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            costs.append((time.perf_counter() - t0) * 1e6)
        return {"median_us": statistics.median(costs), "p99_us": percentile(costs, 0.99)}

    counter_discovery = find_nvml_gpus(device_indices=[torch.cuda.current_device()])
    counter_sensor = counter_discovery.sensors[0]
    meter = Meter([counter_sensor], fallback=None, sync=torch.cuda.synchronize)
    out["cost"] = {
        "nvmlDeviceGetTotalEnergyConsumption": timed(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
        "power_instant_field": timed(instant_w),
        "nvmlDeviceGetPowerUsage": timed(lambda: pynvml.nvmlDeviceGetPowerUsage(handle)),
        "torch.cuda.synchronize_idle": timed(torch.cuda.synchronize),
        "sensor.energy_j": timed(counter_sensor.energy_j),
        "meter.snapshot_with_sync": timed(meter.snapshot),
    }

    # --- accuracy over a load ------------------------------------------------------------
    from greencallbacks.sensors import nvml as nvml_module

    sampled_sensor = nvml_module.NvmlGpuSensor(handle, index=torch.cuda.current_device(), use_counter=False)
    sampled_sensor.name = "gpu-sampled"

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    stop = threading.Event()
    integrals = {"instant_j": 0.0, "average_j": 0.0, "samples": 0}

    def sampler():
        last_t, last_i, last_a = time.monotonic(), instant_w(), pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        while not stop.is_set():
            time.sleep(0.002)
            now, inst, avg = time.monotonic(), instant_w(), pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            integrals["instant_j"] += 0.5 * (inst + last_i) * (now - last_t)
            integrals["average_j"] += 0.5 * (avg + last_a) * (now - last_t)
            integrals["samples"] += 1
            last_t, last_i, last_a = now, inst, avg

    for _ in range(3):
        (a @ b).sum()
    torch.cuda.synchronize()
    time.sleep(0.5)
    sampled_meter = Meter([sampled_sensor], fallback=None, sync=torch.cuda.synchronize) if sampled_sensor else None
    sampled_window = sampled_meter.start() if sampled_meter else None
    window = meter.start()
    counter0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        for _ in range(8):
            a @ b
        torch.cuda.synchronize()
    # Let the counter's 100 ms update catch up, then read everything at one instant.
    time.sleep(0.25)
    stop.set()
    thread.join()
    counter1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    measured = window.stop()
    duration = time.monotonic() - t0
    counter_j = (counter1 - counter0) / 1000.0
    out["load"] = {
        "seconds": duration,
        "counter_j": counter_j,
        "instant_integrated_j": integrals["instant_j"],
        "average_integrated_j": integrals["average_j"],
        "instant_samples": integrals["samples"],
        "mean_power_w": counter_j / duration,
        "instant_vs_counter_pct": 100 * (integrals["instant_j"] / counter_j - 1),
        "average_vs_counter_pct": 100 * (integrals["average_j"] / counter_j - 1),
        "meter_counter_j": measured.energy_j,
        "meter_vs_counter_pct": 100 * (measured.energy_j / counter_j - 1),
    }
    if sampled_window is not None:
        sampled = sampled_window.stop()
        out["load"]["meter_sampled_j"] = sampled.energy_j
        out["load"]["meter_sampled_vs_counter_pct"] = 100 * (sampled.energy_j / counter_j - 1)
        sampled_meter.close()
    meter.close()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as handle_out:
            handle_out.write(text)


if __name__ == "__main__":
    main()
