"""Estimated energy, for what no counter measures: CPU from TDP, RAM from W/GB, declared constants.

All three have ``method`` ``estimated``; records say so.

CPU model: the CPUs draw their TDP when every logical CPU is busy, so each CPU-second this process
tree uses costs ``TDP x sockets / logical CPUs`` joules. CPU-seconds come from the kernel
(``psutil``: this process, its children, and the children they have already reaped), so the
estimate is exact *within the model*: no sampling error, and DataLoader workers are included.
Idle power and other processes are not counted. TDP comes from ``cpu_tdp_w`` when given (per
socket, as datasheets state it), else from the shipped table (CodeCarbon's, MIT) matched against
the CPU model name, else ``DEFAULT_W_PER_CORE`` per physical core. The ``note`` says which.

RAM model: ``w_per_gb`` (0.37 W/GB by default, ~3 W per 8 GB module) times the resident memory
of this process tree (``basis="process"``, the default), sampled by the background thread and
integrated. The process basis attributes memory to the run that uses it and stays sensible on
hosts with terabytes of RAM; ``basis="host"`` charges all installed RAM, which is closer to what a
RAPL dram counter sees on a machine dedicated to one run. GB means 2**30 bytes (module sizes).
"""

from __future__ import annotations

import functools

import math
import os
import platform
import re
import resource
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Sequence

from greencallbacks.checks import as_float, shown
from greencallbacks.sensors.base import Integrator, Kind, Method, Sensor, SensorError

DEFAULT_W_PER_CORE = 10.0  # unknown CPU: desktop parts run ~10-15 W/core, servers ~4-7 W/core
# Arm server cores (Neoverse), which /proc/cpuinfo names by part number only: Ampere Altra Q80-30
# 210 W / 80 cores = 2.6 W, Altra Max M128-30 250 W / 128 = 2.0 W, NVIDIA Grace 500 W / 144 cores
# with its LPDDR5X = 3.5 W. The x86 default would put a 64-core Graviton at 640 W.
ARM_W_PER_CORE = 3.0
_ARM_NEOVERSE_PARTS = {"0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2",
                       "0xd4f": "Neoverse-V2", "0xd8e": "Neoverse-N3", "0xd84": "Neoverse-V3"}
DEFAULT_RAM_W_PER_GB = 0.37
BYTES_PER_GB = 2**30
CPU_POLL_INTERVAL_S = 1.0  # only to see children's CPU time before they exit unreaped
RAM_POLL_INTERVAL_S = 1.0  # memory use changes slowly; each sample walks the process tree
# Above any CPU socket's TDP (the largest are ~500 W), any declared device's power, any memory's
# W/GB (0.37 by default): a larger value is a typo or a unit mistake, and 1e308 W overflowed every
# boundary's sums (no record, no summary). MAX_CPU_TDP_W bounds the session's cpu_tdp_w too.
MAX_CPU_TDP_W = 10_000.0
MAX_DECLARED_W = 1_000_000.0  # a megawatt: more than a rack of GPUs
MAX_RAM_W_PER_GB = 100.0
TDP_TABLE = "cpu_tdp.csv"
TDP_TABLE_SOURCE = "cpu_tdp.csv from CodeCarbon's cpu_power.csv, MIT licence"


def check_finite(name: str, value: float, *, positive: bool = False, at_most: float = math.inf) -> float:
    # as_float: a bool, a string ("0.37") and an integer no float holds (10**400) are refused too.
    number = as_float(value)
    if not math.isfinite(number) or (number <= 0 if positive else number < 0) or number > at_most:
        bound = f" up to {at_most:g}" if math.isfinite(at_most) else ""
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}{bound}, got {shown(value)}")
    return number


def _check_poll_interval(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"poll_interval_s must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _check_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a function taking no argument, or None; got {value!r}")


def _check_share(share: float) -> float:
    share = check_finite("share", share, positive=True)
    if share > 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    return share


# -- what this machine is ------------------------------------------------------------------------


def cpu_model_name(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's marketing name, e.g. ``"Intel(R) Xeon(R) Platinum 8480+"``; for an Arm server,
    which /proc/cpuinfo names by part number only, ``"Arm Neoverse-N1"``; "" if unknown."""
    arm_part = None
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "Model") and value:
                    return value
                if key == "CPU part" and arm_part is None:
                    arm_part = value.lower()
    except OSError:
        pass
    if arm_part is not None:
        return f"Arm {_ARM_NEOVERSE_PARTS.get(arm_part, 'core ' + arm_part)}"
    return platform.processor() or ""


def socket_count(cpuinfo_path: str = "/proc/cpuinfo") -> int:
    """Distinct ``physical id`` values in /proc/cpuinfo; 1 where the file does not say."""
    ids = set()
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    ids.add(value.strip())
    except OSError:
        pass
    return max(1, len(ids))


def _tokens(name: str) -> frozenset[str]:
    text = name.lower()
    text = re.sub(r"\((r|tm|c)\)|®|™", " ", text)
    text = text.split("@", 1)[0]  # clock speed
    text = re.sub(r"\b\d+-core\b", " ", text)
    words = re.findall(r"[a-z0-9][a-z0-9+\-]*", text)
    return frozenset(w for w in words if w not in ("cpu", "processor"))


@lru_cache(maxsize=1)
def _tdp_table() -> tuple[tuple[str, frozenset[str], float], ...]:
    from greencallbacks.carbon.tables import read_rows

    return tuple((row["model"], _tokens(row["model"]), float(row["tdp_w"])) for row in read_rows(TDP_TABLE))


def lookup_tdp_w(cpu_model: str) -> tuple[str, float] | None:
    """(table name, TDP per socket) of the most specific table entry whose words all occur in
    ``cpu_model``; entries must contain a model number, so "AMD EPYC" alone matches nothing."""
    wanted = _tokens(cpu_model)
    best: tuple[int, int, str, float] | None = None
    for name, tokens, tdp_w in _tdp_table():
        if tokens and tokens <= wanted and any(ch.isdigit() for ch in "".join(tokens)):
            key = (len(tokens), len(name), name, tdp_w)
            if best is None or key[:2] > best[:2]:
                best = key
    return (best[2], best[3]) if best else None


def resolve_cpu_tdp_w(
    tdp_w: float | None = None,
    *,
    cpu_model: str | None = None,
    sockets: int | None = None,
    physical_cores: int | None = None,
) -> tuple[float, str]:
    """The TDP of all CPU sockets of this host, in watts, and how it was found."""
    sockets = socket_count() if sockets is None else sockets
    if tdp_w is not None:
        tdp_w = check_finite("tdp_w", tdp_w, positive=True, at_most=MAX_CPU_TDP_W)
        return tdp_w * sockets, f"TDP {tdp_w:g} W per socket (given) x {sockets} socket(s)"
    cpu_model = cpu_model_name() if cpu_model is None else cpu_model
    match = lookup_tdp_w(cpu_model) if cpu_model else None
    if match is not None:
        name, table_tdp_w = match
        return (
            table_tdp_w * sockets,
            f"TDP {table_tdp_w:g} W per socket x {sockets} socket(s) for {cpu_model!r} "
            f"(matched {name!r} in {TDP_TABLE_SOURCE})",
        )
    if physical_cores is None:
        import psutil

        physical_cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    per_core = ARM_W_PER_CORE if cpu_model.startswith("Arm ") else DEFAULT_W_PER_CORE
    return (
        per_core * physical_cores,
        f"CPU {cpu_model or 'model unknown'!r} not in the TDP table: assumed {per_core:g} W per "
        f"physical core x {physical_cores} cores; pass cpu_tdp_w= (per socket) for a better estimate",
    )


# -- what this process uses ----------------------------------------------------------------------


def _own_cpu_seconds(times: Any) -> float:
    # children_* hold children already waited for; absent on some platforms.
    return (
        times.user + times.system + getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
    )


def _own_cpu_seconds_now() -> float:
    """This process's CPU time and its children's already waited for, to the microsecond:
    ``os.times()`` counts 10 ms clock ticks, too coarse for a test phase of 20 ms."""
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


class _ProcessTree:
    """This process and its descendants, for the estimates.

    Listing descendants walks all of /proc (about 1 ms), too slow for a phase boundary, so the
    list is kept for ``max_age_s`` and renewed by whichever read finds it stale: normally the
    meter's background thread, which polls the estimates every second. A child that starts in
    between is seen at the next listing with all its CPU time; children already waited for are
    in the parent's own ``children_*`` times.
    """

    def __init__(self, max_age_s: float = 2.0) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._process: Any = None
        self._children: list[Any] = []
        self._others: tuple[int, ...] = ()
        self._listed_at = -math.inf

    def also(self, pids: Sequence[int]) -> None:
        """Take in these processes and their descendants too (the other ranks on this host), once
        each: under Lightning's own launcher they are this process's children already."""
        with self._lock:
            self._others, self._listed_at = tuple(pids), -math.inf

    def members(self) -> tuple[Any, list[Any]]:
        import psutil

        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: start afresh
                self._pid, self._process, self._listed_at = os.getpid(), psutil.Process(), -math.inf
            now = time.monotonic()
            if now - self._listed_at > self.max_age_s:
                self._children = self._process.children(recursive=True)
                seen = {self._pid, *(child.pid for child in self._children)}
                for pid in self._others:
                    if pid in seen:
                        continue
                    try:
                        root = psutil.Process(pid)
                        tree = [root, *root.children(recursive=True)]
                    except psutil.Error:
                        continue  # that rank has ended
                    self._children.extend(p for p in tree if p.pid not in seen)
                    seen.update(p.pid for p in tree)
                self._listed_at = now
            return self._process, list(self._children)

    def has_live_children(self) -> bool:
        """From the last listing, without walking /proc; True before the first one (or in a forked
        child), as reading the tree may then be slow."""
        return self._pid != os.getpid() or bool(self._children)


_TREE = _ProcessTree()


def measure_other_processes(pids: Sequence[int]) -> None:
    """Have the CPU and RAM estimates of this process tree take in ``pids`` and their descendants
    as well (the host's other ranks, for the rank that measures the host); ``()`` to stop."""
    _TREE.also(pids)


def process_tree_cpu_seconds(process: Any = None) -> float:
    """CPU-seconds used by this process and all its descendants, live or already reaped."""
    import psutil

    if process is None:
        _, children = _TREE.members()
        # This process through system calls (psutil parses /proc/self/stat, in clock ticks, at
        # ten times the cost: this runs at every phase boundary of a process without children).
        total = _own_cpu_seconds_now()
    else:
        children = process.children(recursive=True)
        total = _own_cpu_seconds(process.cpu_times())
    for child in children:
        try:
            total += _own_cpu_seconds(child.cpu_times())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass  # it exited between listing and reading; its time reappears once reaped
    return total


def process_tree_rss_bytes(process: Any = None) -> float:
    """Resident memory of this process and its descendants (shared pages counted per process),
    capped at the installed RAM."""
    import psutil

    if process is None:
        process, children = _TREE.members()
    else:
        children = process.children(recursive=True)
    total = float(process.memory_info().rss)
    for child in children:
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return min(total, host_ram_bytes())


@functools.lru_cache(maxsize=1)
def host_ram_bytes() -> float:
    import psutil

    return float(psutil.virtual_memory().total)  # installed RAM does not change: read it once


# -- the sensors ---------------------------------------------------------------------------------


class CpuEstimateSensor(Sensor):
    """CPU energy as TDP x the share of the host's logical CPUs this process tree keeps busy.

    Args:
        tdp_w: TDP per socket in watts (None: look the CPU up, or 10 W per physical core).
        share: the fraction of the host's CPU power this sensor stands for (1/N when it replaces
            one of N RAPL packages).
        cpu_seconds: cumulative CPU-seconds of what is measured (default: this process tree).
        logical_cpus, cpu_model, sockets, physical_cores: the host (default: detected).
        name, poll_interval_s: as for every sensor.
    """

    kind = Kind.CPU
    method = Method.ESTIMATED
    source = "TDP x CPU time"

    def __init__(
        self,
        tdp_w: float | None = None,
        *,
        share: float = 1.0,
        cpu_seconds: Callable[[], float] | None = None,
        logical_cpus: int | None = None,
        cpu_model: str | None = None,
        sockets: int | None = None,
        physical_cores: int | None = None,
        name: str = "cpu",
        poll_interval_s: float | None = CPU_POLL_INTERVAL_S,
    ) -> None:
        self.share = _check_share(share)
        _check_callable("cpu_seconds", cpu_seconds)
        poll_interval_s = _check_poll_interval(poll_interval_s)
        host_tdp_w, how = resolve_cpu_tdp_w(tdp_w, cpu_model=cpu_model, sockets=sockets, physical_cores=physical_cores)
        if logical_cpus is None:
            logical_cpus = os.cpu_count() or 1
        if isinstance(logical_cpus, bool) or not isinstance(logical_cpus, int) or logical_cpus < 1:
            raise ValueError(f"logical_cpus must be >= 1, got {logical_cpus!r}")
        self.tdp_w = host_tdp_w * self.share
        self.joules_per_cpu_second = host_tdp_w / logical_cpus
        self.name = name
        self.scope = "process tree" if cpu_seconds is None else "cpu"
        self.poll_interval_s = poll_interval_s
        self.note = how + (f"; {self.share:g} of the host" if self.share != 1 else "")
        self._cpu_seconds = cpu_seconds or process_tree_cpu_seconds
        self._reads_tree = cpu_seconds is None
        self._lock = threading.Lock()
        self._base_cpu_s = self._read_cpu_seconds()
        self._high_water_cpu_s = self._base_cpu_s

    @property
    def off_thread(self) -> bool:
        """Whether the meter's thread reads it. The process tree's CPU time costs a /proc read per
        live child process (160 us for four DataLoader workers, on a training thread whose caches
        the step has just evicted): with children, the meter's thread reads it every 0.1 s and a
        boundary carries the latest read forward at its rate. Without (the tree last listed at
        most 2 s ago by the poll), it is two getrusage calls, read at the boundary: a phase
        shorter than those 0.1 s, a 20 ms test, gets its own CPU time, not the rate before it
        (read off the thread, such a test was billed 0 J and the gap after it its energy).
        A counter the caller gives is read in place."""
        return self._reads_tree and _TREE.has_live_children()

    def _read_cpu_seconds(self) -> float:
        try:
            return float(self._cpu_seconds())
        except Exception as error:  # noqa: BLE001 - psutil raises several unrelated types
            raise SensorError(f"{self.name}: cannot read CPU time: {error}") from error

    def _update(self) -> float:
        with self._lock:
            # A child that exits unreaped drops out for a moment; holding the high-water mark
            # keeps the total from dipping and its time from being counted twice.
            self._high_water_cpu_s = max(self._high_water_cpu_s, self._read_cpu_seconds())
            return (self._high_water_cpu_s - self._base_cpu_s) * self.joules_per_cpu_second * self.share

    def energy_j(self) -> float:
        return self._update()

    def poll(self) -> float:
        return self._update()


class RamEstimateSensor(Sensor):
    """RAM energy as ``w_per_gb`` x memory, sampled and integrated.

    Args:
        w_per_gb: watts per GB (2**30 bytes) of memory; 0.37 by default.
        basis: ``"process"`` (resident memory of this process tree) or ``"host"`` (installed RAM).
        share: the fraction of that this sensor stands for (1/N when it replaces one of N RAPL
            dram zones).
        memory_bytes: returns the memory in bytes (default: from ``basis``).
        clock: monotonic seconds; injectable for tests.
    """

    kind = Kind.RAM
    method = Method.ESTIMATED
    source = "resident memory x W/GB"

    def __init__(
        self,
        w_per_gb: float = DEFAULT_RAM_W_PER_GB,
        *,
        basis: str = "process",
        share: float = 1.0,
        memory_bytes: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "ram",
        poll_interval_s: float | None = RAM_POLL_INTERVAL_S,
    ) -> None:
        self.w_per_gb = check_finite("w_per_gb", w_per_gb, at_most=MAX_RAM_W_PER_GB)
        if basis not in ("process", "host"):
            raise ValueError(f"basis must be 'process' or 'host', got {basis!r}")
        self.share = _check_share(share)
        _check_callable("memory_bytes", memory_bytes)
        poll_interval_s = _check_poll_interval(poll_interval_s)
        self.basis = basis
        self.name = name
        self.scope = "process tree" if basis == "process" else "host"
        self.poll_interval_s = poll_interval_s
        memory = "resident memory of this process tree" if basis == "process" else "installed RAM"
        self.note = f"{self.w_per_gb:g} W/GB x {memory}"
        if self.share != 1:
            self.note += f"; {self.share:g} of it"
        if memory_bytes is None:
            memory_bytes = process_tree_rss_bytes if basis == "process" else host_ram_bytes
        self._memory_bytes = memory_bytes
        self._integrator = Integrator(clock)
        self._sample()

    def power_w(self) -> float:
        try:
            gigabytes = float(self._memory_bytes()) / BYTES_PER_GB
        except Exception as error:  # noqa: BLE001
            raise SensorError(f"{self.name}: cannot read memory use: {error}") from error
        return self.w_per_gb * gigabytes * self.share

    def _sample(self) -> float:
        self._last_power_w = self.power_w()
        return self._integrator.add(self._last_power_w)

    def energy_j(self) -> float:
        # Memory changes slowly and is sampled every second by the background thread: a phase
        # boundary integrates up to now at the last sampled power, with no system call.
        return self._integrator.add(self._last_power_w)

    def poll(self) -> float:
        return self._sample()


class ConstantPowerSensor(Sensor):
    """A power the user declares (a switch, a monitor, the rest of the node): watts x time."""

    method = Method.ESTIMATED
    source = "a declared constant power"

    def __init__(
        self,
        name: str,
        watts: float,
        *,
        kind: Kind = Kind.OTHER,
        scope: str = "declared",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.watts = check_finite("watts", watts, at_most=MAX_DECLARED_W)
        self.name = name
        try:
            self.kind = Kind(kind)
        except ValueError:
            raise ValueError(f"kind must be one of {[k.value for k in Kind]}, got {kind!r}") from None
        self.scope = scope
        self.note = f"declared constant {self.watts:g} W"
        self._clock = clock
        self._started = clock()

    def energy_j(self) -> float:
        return self.watts * max(0.0, self._clock() - self._started)

    def power_w(self) -> float:
        return self.watts
