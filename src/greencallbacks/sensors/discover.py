"""Which sensors this process should read, and what replaces one that fails.

GPUs come from NVML (only the devices this process uses), or from amdsmi where NVML finds no
NVIDIA GPU (a process trains on one vendor's GPUs: a CUDA or a ROCm build). The host (CPU and RAM) comes from RAPL
where its counters are readable, else from estimates; everything looked for and not usable is
listed in ``Discovery.unavailable`` with the reason and the fix, so the user can be told once.
With several processes per host, pass ``host=False`` to all but one of them.
"""

from __future__ import annotations

import numbers
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from greencallbacks.checks import as_float, shown
from greencallbacks.sensors.base import Discovery, Kind, Sensor, Unavailable
from greencallbacks.sensors.estimate import (
    DEFAULT_RAM_W_PER_GB,
    MAX_CPU_TDP_W,
    MAX_RAM_W_PER_GB,
    CpuEstimateSensor,
    RamEstimateSensor,
    check_finite,
)
from greencallbacks.sensors.gpu import GpuSensor
from greencallbacks.sensors.rapl import DEFAULT_POWERCAP_ROOT, RaplSensor, find_rapl
from greencallbacks.sensors.share import Apportioned


# Every name discovery (and a fallback replacing a failed sensor) may give a sensor. Which of them
# a run has depends on the hardware (gpu1 only with two GPUs), so a sensor of the user's own must
# avoid all of them, or a fit on another machine would fail at start on a name clash.
RESERVED_NAMES = (
    "cpu, ram, gpu<N>, cpu-package-<N>, cpu-package-<N>-die-<M>, dram-<N>, dram-<N>-die-<M>, "
    "and any of these ending in -estimate"
)
_RESERVED_NAME = re.compile(r"(cpu|ram|gpu\d+|(cpu-package|dram)-\d+(-die-\d+)?)(-estimate)?")


def is_reserved_name(name: str) -> bool:
    """True when discovery may name one of its sensors ``name`` (see ``RESERVED_NAMES``)."""
    return _RESERVED_NAME.fullmatch(name) is not None


def discover_sensors(
    *,
    gpus: Literal["auto"] | Sequence[int] | None = "auto",
    host: bool = True,
    cpu_tdp_w: float | None = None,
    ram_w_per_gb: float = DEFAULT_RAM_W_PER_GB,
    extra: Iterable[Sensor] = (),
    powercap_root: str | os.PathLike = DEFAULT_POWERCAP_ROOT,
    pynvml: Any = None,
    amdsmi: Any = None,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.monotonic,
) -> Discovery:
    """Find the sensors.

    Args:
        gpus: ``"auto"`` every GPU visible to CUDA (or HIP); a list of CUDA indices (the devices
            this process trains on; HIP indices on AMD); None for no GPU.
        host: measure CPU and RAM (one process per host should).
        cpu_tdp_w: TDP per CPU socket for the estimate (None: looked up from the CPU model).
        ram_w_per_gb: watts per GB for the RAM estimate.
        extra: sensors of the user's own (e.g. ``ConstantPowerSensor``), appended; their names
            must differ from each other and from ``RESERVED_NAMES`` (``EnergySession`` checks).
        powercap_root, pynvml, amdsmi, environ, clock: for tests.
    """
    gpus, cpu_tdp_w, ram_w_per_gb = _checked(gpus, cpu_tdp_w, ram_w_per_gb, powercap_root)
    found = Discovery()
    if gpus is not None:
        device_indices = None if gpus == "auto" else gpus
        if device_indices != []:
            _merge(found, _gpu_sensors(device_indices, environ, pynvml, amdsmi, clock))
    if host:
        _merge(found, _host_sensors(cpu_tdp_w, ram_w_per_gb, powercap_root, clock))
    found.sensors.extend(extra)
    return found


def _checked(
    gpus: object, cpu_tdp_w: object, ram_w_per_gb: object, powercap_root: object
) -> tuple[Any, float | None, float]:
    """The arguments checked as the callbacks check theirs (the same functions and messages), each
    refused naming it: a user's own loop calls this directly."""
    if not isinstance(powercap_root, (str, os.PathLike)):
        raise ValueError(f"powercap_root must be a directory path (str or os.PathLike), got {powercap_root!r}")
    ram_w_per_gb = check_finite("ram_w_per_gb", ram_w_per_gb, at_most=MAX_RAM_W_PER_GB)
    return check_gpus(gpus), check_cpu_tdp_w(cpu_tdp_w), ram_w_per_gb


MAX_GPU_INDEX = 1023  # far above any host's; an index past it is a mistake (10**400 failed deep inside)


def check_gpus(gpus: object) -> "str | list[int] | None":
    """``gpus=``: ``"auto"``, None, or the CUDA indices as plain ints (from a list, tuple, range or array)."""
    if gpus is None or (isinstance(gpus, str) and gpus == "auto"):
        return gpus
    indices = None
    if not isinstance(gpus, (str, bytes)) and isinstance(gpus, Iterable):
        try:
            indices = list(gpus)  # once: a generator is read only once
        except TypeError:  # iterable in type only (a 0-d NumPy array)
            pass
    # numbers.Integral: an int, or NumPy's (a NumPy array's elements); never a bool.
    if indices is None or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and 0 <= i <= MAX_GPU_INDEX
                                  for i in indices):
        given = shown(gpus) if indices is None else f"[{', '.join(map(shown, indices))}]"
        raise ValueError(f"gpus must be 'auto', None or a list of CUDA device indices (ints from 0 to {MAX_GPU_INDEX}), "
                         f"got {given}")
    return [int(i) for i in indices]


def check_cpu_tdp_w(cpu_tdp_w: object) -> float | None:
    """``cpu_tdp_w=``: None (a table's or the default TDP) or watts per CPU socket."""
    if cpu_tdp_w is None:
        return None
    watts = as_float(cpu_tdp_w)
    if not (0 < watts <= MAX_CPU_TDP_W):  # NaN (not a number, or none a float holds) fails too
        raise ValueError(f"cpu_tdp_w must be a positive number of watts (per CPU socket) up to {MAX_CPU_TDP_W:g}, "
                         f"got {shown(cpu_tdp_w)}")
    return watts


def _gpu_sensors(
    device_indices: list[int] | None, environ: Mapping[str, str], pynvml: Any, amdsmi: Any, clock: Callable[[], float]
) -> Discovery:
    from greencallbacks.sensors.nvml import find_nvml_gpus

    nvidia = find_nvml_gpus(device_indices, environ=environ, pynvml=pynvml, clock=clock)
    if nvidia.sensors:
        return nvidia
    from greencallbacks.sensors.amd import find_amd_gpus

    amd = find_amd_gpus(device_indices, environ=environ, amdsmi=amdsmi, clock=clock)
    if amd.sensors:
        # An AMD machine: that NVML found no NVIDIA driver or bindings is no news. Its
        # machine-wide reasons are named "gpu"; per-device problems keep their own names.
        nvidia.unavailable = [u for u in nvidia.unavailable if u.name != "gpu"]
    return Discovery(nvidia.sensors + amd.sensors, nvidia.unavailable + amd.unavailable)


def _host_sensors(
    cpu_tdp_w: float | None, ram_w_per_gb: float, powercap_root: str | os.PathLike, clock: Callable[[], float]
) -> Discovery:
    rapl = find_rapl(powercap_root, clock=clock)
    found = Discovery(unavailable=list(rapl.unavailable))
    packages = [s for s in rapl.sensors if s.kind == Kind.CPU]
    drams = [s for s in rapl.sensors if s.kind == Kind.DRAM]
    # All sockets or none: mixing a counter for one socket with an estimate for the whole host
    # would count the measured socket twice.
    packages_complete = bool(packages) and not any(u.kind == Kind.CPU for u in rapl.unavailable)
    drams_complete = bool(drams) and not any(u.kind == Kind.DRAM for u in rapl.unavailable)
    settings = {"tdp_w": cpu_tdp_w, "w_per_gb": ram_w_per_gb}
    if packages_complete:
        found.sensors.extend(packages)
    else:
        found.sensors.append(CpuEstimateSensor(cpu_tdp_w))
    if drams_complete:
        found.sensors.extend(drams)
    else:
        if packages and not drams and not any(u.kind == Kind.DRAM for u in rapl.unavailable):
            found.unavailable.append(
                Unavailable("dram", Kind.DRAM, "this CPU's RAPL has no dram domain (usual on desktop and laptop CPUs)")
            )
        found.sensors.append(RamEstimateSensor(ram_w_per_gb, clock=clock))
    for sensor in rapl.sensors:
        if sensor in found.sensors:
            sensor.estimate_settings = settings  # type: ignore[attr-defined] - read by fallback_for
        else:
            sensor.close()
    return found


def _merge(into: Discovery, found: Discovery) -> None:
    into.sensors.extend(found.sensors)
    into.unavailable.extend(found.unavailable)


# A GPU's UUID as NVML writes it (MIG instances' too), found in an unavailable GPU's reason.
_GPU_UUID = re.compile(r"\b(?:GPU|MIG)-[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b")


def unmeasured_gpus(unavailable: Iterable[Unavailable]) -> list[dict[str, str]]:
    """The GPUs in ``unavailable`` that discovery named (``gpu<N>``: listed, but their energy and
    power could not be read, or NVML could not use them), each as ``name``, ``uuid`` where the
    reason gives it, and ``reason``. A GPU has no estimate to fall back on: records leave these
    out, so the run's summary lists them. Reasons of the whole machine (no bindings, no GPU
    visible) name no GPU and are not among them."""
    out = []
    for u in unavailable:
        if u.kind != Kind.GPU or not re.fullmatch(r"gpu\d+", u.name):
            continue
        gpu = {"name": u.name}
        uuid = _GPU_UUID.search(u.reason)
        if uuid:
            gpu["uuid"] = uuid.group(0)
        gpu["reason"] = u.reason
        out.append(gpu)
    return out


def gpu_process_ids(sensor: Sensor) -> set[int] | None:
    """The processes running CUDA work on ``sensor``'s GPU now (NVML's
    ``nvmlDeviceGetComputeRunningProcesses``: one call, about a millisecond), or None where that
    cannot be known: not an NVML GPU, a MIG share (its GPU's other instances are other work by
    design), a binding without the call or one that misreads it, or a failure. NVML gives the
    process ids of its own pid namespace: inside a container they may not be this one's (see
    ``session.GpuNeighbours``)."""
    from greencallbacks.sensors.nvml import NvmlGpuSensor

    if not isinstance(sensor, NvmlGpuSensor) or _misreads_process_list(sensor._nvml):
        return None
    try:
        return {int(process.pid) for process in sensor._nvml.nvmlDeviceGetComputeRunningProcesses(sensor._handle)}
    except Exception:  # noqa: BLE001 - a note only: never a failure of the run
        return None


def _misreads_process_list(nvml: Any) -> bool:
    """nvidia-ml-py 12.535.77 alone reads NVML's process list in 32-byte entries (its
    ``c_nvmlProcessInfo_t`` has ``usedGpuCcProtectedMemory``) where drivers other than 535.43 to
    535.86 write 24-byte ones: every pid after the first is read from inside another entry (a
    memory size), and another rank of this run read so was reported as another job's process.
    12.535.108 went back to 24 bytes."""
    entry = getattr(nvml, "c_nvmlProcessInfo_t", None)
    return any(field[0] == "usedGpuCcProtectedMemory" for field in getattr(entry, "_fields_", ()))


def fallback_for(sensor: Sensor) -> Sensor | None:
    """The estimate that takes over when ``sensor`` fails mid-run; None when nothing can.

    A RAPL package becomes a CPU estimate, a RAPL dram zone a RAM estimate, each for its share
    of the host. A GPU whose energy counter fails while its power reads work is read on by
    integrating its power (``sampled``); one whose power fails too (lost) has no honest
    replacement: the meter stops counting it and says so.
    """
    if isinstance(sensor, GpuSensor):
        return sensor.sampled_copy()
    if isinstance(sensor, Apportioned):
        # A MIG instance's (or one die's) share of its GPU: the GPU's own replacement, billed the
        # same share. (Without it, a MIG GPU whose counter turned NOT_SUPPORTED stopped counting
        # where a whole GPU goes on sampled: 1,106 J of 4,200.)
        replacement = fallback_for(sensor.device)
        return None if replacement is None else Apportioned(replacement, sensor.share, sensor.rule)
    if isinstance(sensor, RaplSensor):
        settings = getattr(sensor, "estimate_settings", {})
        share = 1.0 / max(1, sensor.package_count)
        if sensor.kind == Kind.CPU:
            return CpuEstimateSensor(settings.get("tdp_w"), share=share, name=f"{sensor.name}-estimate")
        w_per_gb = settings.get("w_per_gb", DEFAULT_RAM_W_PER_GB)
        return RamEstimateSensor(w_per_gb, share=share, name=f"{sensor.name}-estimate")
    return None
