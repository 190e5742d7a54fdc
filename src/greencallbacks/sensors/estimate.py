"""Estimated energy, for what no counter measures: CPU from TDP, RAM from W/GB, declared constants.

All three have ``method`` ``estimated``; records say so.

CPU model: a socket draws its TDP when every hardware thread on it is busy, so each CPU-second this
process tree uses costs ``TDP per socket / hardware threads per socket`` joules: on bare metal
``TDP x sockets / logical CPUs``. In a virtual machine (``hypervisor`` among /proc/cpuinfo's flags)
/proc/cpuinfo describes the VM, not its host, while the model name and its TDP are the host
socket's: the host's threads per socket come from the model name (``96-Core`` on AMD EPYC, two
threads per core) or the table's ``threads`` column, and where neither knows them the per-core
default below is used rather than billing a whole socket to a few vCPUs. CPU-seconds come from the
kernel (``psutil``: this process, its children, and the children they have already reaped), so the
estimate is exact *within the model*: no sampling error, and DataLoader workers are included.
Idle power and other processes are not counted. TDP comes from ``cpu_tdp_w`` when given (per
socket, as datasheets state it), else from the shipped table (CodeCarbon's, MIT, with a few rows
added) matched against the CPU model name, else ``DEFAULT_W_PER_CORE`` per physical core. The
``note`` says which, and the ``source`` (what a paper's statement says) too.

RAM model: ``w_per_gb`` (0.37 W/GB by default, see ``DEFAULT_RAM_W_PER_GB``) times the resident memory
of this process tree (``basis="process"``, the default), sampled by the background thread and
integrated. The process basis attributes memory to the run that uses it and stays sensible on
hosts with terabytes of RAM; ``basis="host"`` charges all installed RAM, which is closer to what a
RAPL dram counter sees on a machine dedicated to one run. GB means 2**30 bytes (module sizes).
"""

from __future__ import annotations

import csv
import functools

import math
import os
import platform
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple, Sequence

from greencallbacks.checks import as_float, shown
from greencallbacks.sensors.base import Integrator, Kind, Method, Sensor, SensorError

# Unknown CPU: an assumption of this project, not a published figure. The shipped table's desktop
# parts run ~10-15 W per core, its server parts ~4-7 W (Xeon 8480+ 350 W / 56 cores, EPYC 9654
# 360 W / 96); the Green Algorithms calculator assumes 12 W per core for an unknown CPU
# (Advanced Science 2021, its data/TDP_cpu.csv "Any"). data/SOURCES.md says the same.
DEFAULT_W_PER_CORE = 10.0
DEFAULT_W_PER_CORE_SOURCE = "greencallbacks' assumption, see its data/SOURCES.md"
# Arm server cores (Neoverse), which /proc/cpuinfo names by part number only: Ampere Altra Q80-30
# 210 W / 80 cores = 2.6 W, Altra Max M128-30 250 W / 128 = 2.0 W, NVIDIA Grace 500 W / 144 cores
# with its LPDDR5X = 3.5 W. The x86 default would put a 64-core Graviton at 640 W.
ARM_W_PER_CORE = 3.0
_ARM_NEOVERSE_PARTS = {"0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2",
                       "0xd4f": "Neoverse-V2", "0xd8e": "Neoverse-N3", "0xd84": "Neoverse-V3"}
# Green Algorithms' 0.3725 W/GB (Advanced Science 2021, its referenceValues.csv memoryPower,
# from a DaMoN 2017 analysis of memory power and Tom's Hardware's measurements), which is Crucial's
# "3 W per 8 GB of DDR3 or DDR4" (0.375 W/GB) that CodeCarbon's ram.py cites. data/SOURCES.md.
DEFAULT_RAM_W_PER_GB = 0.37
DEFAULT_RAM_W_PER_GB_SOURCE = "Green Algorithms' 0.3725 W/GB, Advanced Science 2021"
BYTES_PER_GB = 2**30
# The CPU estimate's poll looks for processes born in the tree this often (``_ProcessTree.watch``):
# a child's CPU time is read, and billed as it runs, from within this of its start.
CPU_POLL_INTERVAL_S = 0.1
CPU_POLL_READ_S = 1.0  # ... and reads the tree's CPU time where nothing else has for this long
RAM_POLL_INTERVAL_S = 1.0  # memory use changes slowly; each sample walks the process tree
# Above any CPU socket's TDP (the largest are ~500 W), any declared device's power, any memory's
# W/GB (0.37 by default): a larger value is a typo or a unit mistake, and 1e308 W overflowed every
# boundary's sums (no record, no summary). MAX_CPU_TDP_W bounds the session's cpu_tdp_w too.
MAX_CPU_TDP_W = 10_000.0
MAX_DECLARED_W = 1_000_000.0  # a megawatt: more than a rack of GPUs
MAX_RAM_W_PER_GB = 100.0
TDP_TABLE = "cpu_tdp.csv"
TDP_TABLE_SOURCE = "cpu_tdp.csv from CodeCarbon's cpu_power.csv, MIT licence"
CPUINFO_PATH = "/proc/cpuinfo"


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


def cpu_model_name(cpuinfo_path: str = CPUINFO_PATH) -> str:
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


def socket_count(cpuinfo_path: str = CPUINFO_PATH) -> int:
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


def is_virtual_machine(cpuinfo_path: str = CPUINFO_PATH) -> bool:
    """Whether /proc/cpuinfo's ``flags`` include ``hypervisor`` (an x86 guest: the CPUID bit every
    hypervisor sets); False on bare metal, where the file does not say, and on Arm."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return "hypervisor" in value.split()
    except OSError:
        pass
    return False


def _tokens(name: str) -> frozenset[str]:
    text = name.lower()
    text = re.sub(r"\((r|tm|c)\)|®|™", " ", text)
    text = text.split("@", 1)[0]  # clock speed
    text = re.sub(r"\b\d+-core\b", " ", text)
    words = re.findall(r"[a-z0-9][a-z0-9+\-]*", text)
    return frozenset(w for w in words if w not in ("cpu", "processor"))


class TdpRow(NamedTuple):
    """One row of the shipped CPU table."""

    model: str
    tdp_w: float  # per socket
    tdp_source: str  # "" for CodeCarbon's figure; else where the added row's figure comes from
    threads: int | None  # hardware threads per socket, where the table knows them
    threads_source: str


@lru_cache(maxsize=1)
def _tdp_lines() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The table's header, its data lines and the same lowercased, unparsed. Parsing and
    tokenizing all ~4,900 rows took ~40 ms of a process's first fit set-up; a lookup parses only
    the few lines that can match."""
    from greencallbacks.carbon.tables import read_table_text

    text = read_table_text(TDP_TABLE)
    header, *lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return header, tuple(lines), tuple(line.lower() for line in lines)


@lru_cache(maxsize=16)
def _lookup_row(cpu_model: str) -> TdpRow | None:
    """The most specific table entry whose words all occur in ``cpu_model`` (see ``lookup_tdp_w``)."""
    wanted = _tokens(cpu_model)
    # An entry matches only if it has a word with a digit, and all its words are among ``wanted``:
    # so its line contains one of ``wanted``'s words with a digit (a word is a substring of the
    # lowercased name, which quoting in CSV leaves whole). Those lines are the candidates.
    numbered = [word for word in wanted if any(ch.isdigit() for ch in word)]
    if not numbered:
        return None
    header, lines, lowered = _tdp_lines()
    candidates = [line for line, low in zip(lines, lowered) if any(word in low for word in numbered)]
    best: tuple[int, int] | None = None
    found = None
    for row in csv.DictReader([header, *candidates]):
        tokens = _tokens(row["model"])
        if tokens and tokens <= wanted and any(ch.isdigit() for ch in "".join(tokens)):
            key = (len(tokens), len(row["model"]))
            if best is None or key > best:
                best, found = key, row
    if found is None:
        return None
    threads = found["threads"]
    return TdpRow(found["model"], float(found["tdp_w"]), found["tdp_source"], int(threads) if threads else None,
                  found["threads_source"])


def lookup_tdp_w(cpu_model: str) -> tuple[str, float] | None:
    """(table name, TDP per socket) of the most specific table entry whose words all occur in
    ``cpu_model``; entries must contain a model number, so "AMD EPYC" alone matches nothing."""
    row = _lookup_row(cpu_model)
    return (row.model, row.tdp_w) if row else None


_CORES_IN_NAME = re.compile(r"\b(\d+)-Core\b", re.IGNORECASE)


def host_threads_per_socket(cpu_model: str) -> tuple[int, str] | None:
    """Hardware threads per socket of the CPU named ``cpu_model``, and where that came from: the
    table's ``threads`` column, else an AMD EPYC name's core count ("AMD EPYC 9654 96-Core
    Processor") times the two threads per core (SMT) every EPYC has; None where neither says."""
    row = _lookup_row(cpu_model)
    if row is not None and row.threads:
        return row.threads, f"{TDP_TABLE}: {row.threads_source}"
    cores = _CORES_IN_NAME.search(cpu_model)
    if cores and "epyc" in cpu_model.lower():
        return 2 * int(cores.group(1)), f"{cores.group(1)} cores in its name x 2 threads per core, as on every EPYC"
    return None


def _matched(row: TdpRow) -> str:
    return f"matched {row.model!r} in " + (f"{TDP_TABLE}: {row.tdp_source}" if row.tdp_source else TDP_TABLE_SOURCE)


def _table_words(row: TdpRow) -> str:
    """Where a row's TDP comes from, for a paper's statement."""
    return "greencallbacks' additions and corrections to CodeCarbon's CPU table" if row.tdp_source else "CodeCarbon's CPU table"


class CpuPower(NamedTuple):
    """What the CPU estimate bills: ``watts`` when every logical CPU this machine shows is busy
    (on bare metal all sockets' TDP; in a VM its vCPUs' share of the host's), and in words."""

    watts: float
    note: str  # how it was found, with the figures (the record's note)
    source: str  # what a paper says the energy is "estimated from" (Sensor.source)


def resolve_cpu_power(
    tdp_w: float | None = None,
    *,
    cpu_model: str | None = None,
    sockets: int | None = None,
    physical_cores: int | None = None,
    logical_cpus: int | None = None,
    cpuinfo_path: str = CPUINFO_PATH,
) -> CpuPower:
    """The power of this machine's CPUs with all of them busy, and how it was found.

    ``tdp_w`` (the user's ``cpu_tdp_w=``) is per socket that /proc/cpuinfo shows, on bare metal
    and in a VM alike: in a VM, which shows its vCPUs as its own socket(s), give the VM's share
    (the host socket's TDP x vCPUs / the host's threads per socket), or the whole host socket's
    TDP is billed to the VM's vCPUs. Host facts left None are read from ``cpuinfo_path`` (model,
    sockets, whether a VM) or from the OS (logical and physical CPUs).
    """
    sockets = socket_count(cpuinfo_path) if sockets is None else sockets
    if tdp_w is not None:
        tdp_w = check_finite("tdp_w", tdp_w, positive=True, at_most=MAX_CPU_TDP_W)
        return CpuPower(tdp_w * sockets, f"TDP {tdp_w:g} W per socket (given) x {sockets} socket(s)",
                        f"TDP x CPU time (TDP {tdp_w:g} W per socket, given by the user)")
    cpu_model = cpu_model_name(cpuinfo_path) if cpu_model is None else cpu_model
    row = _lookup_row(cpu_model) if cpu_model else None
    virtual = is_virtual_machine(cpuinfo_path)
    if row is not None and not virtual:
        return CpuPower(
            row.tdp_w * sockets,
            f"TDP {row.tdp_w:g} W per socket x {sockets} socket(s) for {cpu_model!r} ({_matched(row)})",
            f"TDP x CPU time (TDP {row.tdp_w:g} W per socket of {row.model}, from {_table_words(row)})",
        )
    if logical_cpus is None:
        logical_cpus = os.cpu_count() or 1
    host = host_threads_per_socket(cpu_model) if row is not None else None
    if row is not None and host is not None:  # a VM: its vCPUs' share of the host's socket
        threads, where = host
        per_cpu = row.tdp_w / threads
        return CpuPower(
            per_cpu * logical_cpus,
            f"VM: TDP {row.tdp_w:g} W per host socket for {cpu_model!r} ({_matched(row)}) / {threads} hardware "
            f"threads per socket ({where}) = {per_cpu:.4g} W per busy vCPU x {logical_cpus} vCPU(s)",
            f"TDP x CPU time, a VM's share of its host's ({per_cpu:.4g} W per busy vCPU: TDP {row.tdp_w:g} W per "
            f"socket of {row.model}, from {_table_words(row)}, over {threads} hardware threads)",
        )
    if physical_cores is None:
        import psutil

        physical_cores = psutil.cpu_count(logical=False) or logical_cpus
    arm = cpu_model.startswith("Arm ")
    per_core = ARM_W_PER_CORE if arm else DEFAULT_W_PER_CORE
    per_core_source = "Arm server cores' TDP per core, from Ampere's and NVIDIA's datasheets" if arm else (
        DEFAULT_W_PER_CORE_SOURCE)
    assumed = f"assumed {per_core:g} W per physical core x {physical_cores} cores"
    if row is not None:  # a VM on a host socket of known TDP but unknown size: not the whole socket
        return CpuPower(
            per_core * physical_cores,
            f"VM: host socket size unknown: TDP {row.tdp_w:g} W per host socket for {cpu_model!r} "
            f"({_matched(row)}), but not its hardware threads, and the whole socket is not this VM's: {assumed}; "
            "pass cpu_tdp_w= (the VM's share: TDP x vCPUs / the host's threads per socket) for a better estimate",
            f"a default of {per_core:g} W per physical core x CPU time (a VM whose host socket's size is unknown; "
            f"the default is {per_core_source})",
        )
    return CpuPower(
        per_core * physical_cores,
        f"CPU {cpu_model or 'model unknown'!r} not in the TDP table: {assumed}; "
        "pass cpu_tdp_w= (per socket) for a better estimate",
        f"a default of {per_core:g} W per physical core x CPU time (no TDP found for CPU "
        f"{cpu_model or 'model unknown'!r}; the default is {per_core_source})",
    )


# -- what this process uses ----------------------------------------------------------------------


def _own_cpu_seconds(times: Any) -> float:
    # children_* hold children already waited for; absent on some platforms.
    return (
        times.user + times.system + getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
    )


def _own_and_waited_cpu_seconds() -> tuple[float, float]:
    """This process's CPU time, and its children's already waited for, to the microsecond:
    ``os.times()`` counts 10 ms clock ticks, too coarse for a test phase of 20 ms."""
    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, waited.ru_utime + waited.ru_stime


def _pid_exists(pid: int) -> bool:
    """Whether process ``pid`` exists, a zombie not yet waited for included: a system call, not a
    /proc read. A pid taken by another user's process since is not the one that was read."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


# Linux gives every process a CPU clock that any process may read: clockid (~pid << 3) | 2
# (MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)), the run time of all its threads to the nanosecond,
# a zombie's included: one system call, ~0.2 us, where its /proc/<pid>/stat costs ~12 us (warm) in
# 10 ms ticks. It lacks the process's own waited-for children (stat's cutime and cstime).
CLOCK_SLACK_S = 1e-6  # /proc's ticks are the clock's run time truncated: a read never exceeds the clock
PROCESS_CPU_CLOCKS = sys.platform.startswith("linux") and hasattr(time, "clock_gettime")


def _process_cpu_seconds(pid: int) -> float | None:
    """The CPU time of process ``pid``'s threads from its CPU clock; None where it is gone
    (waited for) or no such clock can be read."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except (OSError, OverflowError):
        return None


class _ChildRead(NamedTuple):
    pid: int
    parent: int  # whose waited-for time its time moves into once it ends
    seconds: float  # its CPU time, with its own waited-for children's, as read
    waited_s: float  # the latter part


class _ChildReads(NamedTuple):
    """The tree's latest per-process CPU times (see ``_ProcessTree.keep_reads``)."""

    pid: int  # the process whose tree they are (a forked child starts afresh)
    waited_s: float  # its children's CPU time already waited for, read before them
    children: tuple[_ChildRead, ...]  # each descendant read
    total_s: float  # their CPU time


def _newest_pid() -> int | None:
    """The pid last handed out in this pid namespace (/proc/loadavg's last field; a new thread
    takes one too): one small read. None where it is not known (not Linux)."""
    try:
        with open("/proc/loadavg", "rb") as file:
            return int(file.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (/proc/<pid>/status); None for a process gone, or a thread:
    threads take pids from the same numbering, and /proc/<tid> shows their whole process."""
    try:
        with open(f"/proc/{pid}/status", "rb") as file:
            head = file.read(1024)
    except OSError:
        return None
    fields = dict(line.split(b":", 1) for line in head.splitlines() if b":" in line)
    try:
        return int(fields[b"PPid"]) if int(fields[b"Tgid"]) == pid else None
    except (KeyError, ValueError):
        return None


class _ProcessTree:
    """This process and its descendants, for the estimates.

    Listing descendants walks all of /proc (psutil reads every process's stat file: 11-20 ms for
    the 120-160 processes of the 2-CPU VM of benchmarks/RESULTS.md, 180 ms once while training
    held the GIL), too slow for a phase boundary and for every 0.1 s. So the meter's thread lists it
    every ``max_age_s`` and, at each CPU poll (0.1 s), takes in the processes born in it since
    (``watch``): the pids handed out since (/proc/loadavg), each one's parent read from /proc. A
    child is then read from within a poll of its start, and its CPU time billed as it runs: seen
    only at a listing or when reaped, a fire-and-forget ``Popen`` of epoch 1 had its 0.3 CPU-s
    billed to epoch 4. Other callers list it only where the meter's thread has not for twice
    ``max_age_s``. Children already waited for are in the parent's own ``children_*`` times.
    """

    MAX_BORN = 64  # pids to look at per poll; past that (or where pids wrapped) the tree is listed
    LISTING_SHARE = 0.01  # ... at most that share of the time

    def __init__(self, max_age_s: float = 2.0, newest_pid: Callable[[], int | None] = _newest_pid,
                 parent_pid: Callable[[int], int | None] = _parent_pid,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._newest_pid = newest_pid
        self._parent_pid = parent_pid
        self._clock = clock
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._process: Any = None
        self._children: list[Any] = []
        self._others: tuple[int, ...] = ()
        self._listed_at = -math.inf
        self._listing_s = 0.0  # how long the last listing took
        self._seen_pid: int | None = None  # the newest pid when the tree was last listed or watched
        self._reads: _ChildReads | None = None  # the descendants' latest CPU times (see keep_reads)
        self.parents: dict[int, tuple[Any, int]] = {}  # pid: (its process, its parent's pid), as read

    def also(self, pids: Sequence[int]) -> None:
        """Take in these processes and their descendants too (the other ranks on this host), once
        each: under Lightning's own launcher they are this process's children already."""
        with self._lock:
            self._others, self._listed_at = tuple(pids), -math.inf

    def scope(self) -> str:
        """What the estimates measure, for their records: the host's first rank also measures the
        other ranks on it (a note saying "this process tree" hid that it covers them)."""
        ranks = len(self._others) + 1
        return "process tree" if ranks == 1 else f"process trees of this host's {ranks} ranks"

    def members(self, max_age_s: float | None = None) -> tuple[Any, list[Any]]:
        """This process and its descendants, listed again if older than ``max_age_s`` (default:
        twice ``self.max_age_s``, which only a tree the meter's thread does not watch reaches)."""
        import psutil

        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: start afresh
                self._pid, self._process, self._listed_at = os.getpid(), psutil.Process(), -math.inf
            max_age_s = 2 * self.max_age_s if max_age_s is None else max_age_s
            if self._clock() - self._listed_at > max_age_s:
                self._list()
            return self._process, list(self._children)

    def _list(self) -> None:
        import psutil

        self._seen_pid = self._newest_pid()  # before: what is born meanwhile is watched for next
        self._listed_at = now = self._clock()
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
        self._listing_s = self._clock() - now

    def watch(self) -> None:
        """On the meter's thread: take in the processes born in the tree since it was last looked
        at, or list it (every ``max_age_s``; where the pids born cannot be looked at one by one,
        at most every ``_listing_s / LISTING_SHARE``)."""
        import psutil

        newest, age = self._newest_pid(), self._clock() - self._listed_at
        if self._pid != os.getpid() or age > self.max_age_s:
            self.members(max_age_s=0.0)
            return
        seen = self._seen_pid
        if newest is not None and newest == seen:
            return  # nothing was born
        if newest is None or seen is None or not 0 < newest - seen <= self.MAX_BORN:
            if age > self._listing_s / self.LISTING_SHARE:
                self.members(max_age_s=0.0)
            return
        tree = {self._pid, *(child.pid for child in self._children)}
        born = []
        for pid in range(seen + 1, newest + 1):  # in order: a child's own children come after it
            if self._parent_pid(pid) in tree:
                tree.add(pid)
                born.append(pid)
        found = []
        for pid in born:
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                pass  # gone already: its time is in its parent's children_* times once reaped
        with self._lock:
            if self._seen_pid == seen:  # (not listed meanwhile)
                self._children = self._children + found
                self._seen_pid = newest

    def keep_reads(self, waited_s: float, children: list[_ChildRead]) -> None:
        """Keep the descendants' CPU times just read (``waited_s`` read before them) for
        ``boundary_cpu_seconds``; replaced whole, so a boundary never sees half of them."""
        if not children:  # (each boundary of a process without children: nothing to build)
            self._reads = None
            return
        self._reads = _ChildReads(os.getpid(), waited_s, tuple(children), math.fsum(c.seconds for c in children))

    def boundary_cpu_seconds(self) -> float:
        """The tree's CPU time without a /proc read, for a phase boundary on the training thread:
        this process's own and its children's already waited for (getrusage), then each
        descendant the meter's thread last read (every 0.1 s): its CPU clock now where Linux has
        one (a system call each), with its own waited-for children's time as read; elsewhere all
        of it as read. Never more than the tree has used: at most a child's latest time is late.

        A process gone since the reads was waited for by its parent, and its time is in the
        parent's: in this process's waited-for time (read first: one waited for between the two
        is in neither, not in both), where its read is left out; or in a descendant's, whose read
        (made before its own: parents are listed first) does not hold it, where its read stays
        until the next. A pid taken by a new process has a CPU clock below the read: gone too."""
        own_s, waited_s = _own_and_waited_cpu_seconds()
        reads = self._reads
        if reads is None or reads.pid != os.getpid():
            return own_s + waited_s
        if not PROCESS_CPU_CLOCKS and waited_s == reads.waited_s:
            return own_s + waited_s + reads.total_s  # (none of its children waited for since: none left out)
        total = own_s + waited_s
        gone: dict[int, _ChildRead] = {}
        for child in reads.children:
            if PROCESS_CPU_CLOCKS:
                threads_s = _process_cpu_seconds(child.pid)
                now_s = -math.inf if threads_s is None else threads_s + child.waited_s
                live = now_s >= child.seconds - CLOCK_SLACK_S
            else:
                now_s, live = child.seconds, _pid_exists(child.pid)
            if live:
                total += max(child.seconds, now_s)
            else:
                gone[child.pid] = child
        for child in gone.values():
            parent = child.parent
            for _ in gone:  # up through its parents gone too, to the one that holds its time now
                if parent not in gone:
                    break
                parent = gone[parent].parent
            if parent != reads.pid:
                total += child.seconds
        return total

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
    """CPU-seconds used by this process and all its descendants, live or already reaped: those
    live as of the tree's latest listing (see ``_ProcessTree``)."""
    import psutil

    if process is None:
        _, children = _TREE.members()
        # This process through system calls (psutil parses /proc/self/stat, in clock ticks, at
        # ten times the cost: this runs at every phase boundary of a process without children).
        # Before the children: one waited for meanwhile is in `waited_s` or read, at worst in neither.
        own_s, waited_s = _own_and_waited_cpu_seconds()
        total = own_s + waited_s
    else:
        children = process.children(recursive=True)
        total = _own_cpu_seconds(process.cpu_times())
    reads, parents, known = [], _TREE.parents, {}
    for child in children:  # (listed parents first: a grandchild reaped between is in neither)
        try:
            times = child.cpu_times()
            parent = parents.get(child.pid)
            if parent is None or parent[0] != child:  # (psutil's ppid() costs twice cpu_times(): once a process)
                parent = (child, child.ppid())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # reaped since the listing: its time is in its parent's children_* times now
        known[child.pid] = parent
        parent = parent[1]
        seconds = _own_cpu_seconds(times)
        waited = getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
        threads_s = _process_cpu_seconds(child.pid) if PROCESS_CPU_CLOCKS else None
        if threads_s is not None and threads_s + waited >= seconds - CLOCK_SLACK_S:
            # Its threads' time to the nanosecond: up to two 10 ms ticks more than stat's, which a
            # boundary reading the clock had already handed out (and the run's last read lacked).
            seconds = threads_s + waited
        reads.append(_ChildRead(child.pid, parent, seconds, waited))
        total += seconds
    if process is None:
        _TREE.parents = known
        _TREE.keep_reads(waited_s, reads)
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

    Each busy CPU-second costs ``TDP per socket / hardware threads per socket`` joules; in a VM,
    the host's socket and threads (see the module's docstring), or the per-core default where the
    host's size is unknown. ``tdp_w`` is what all the CPUs this machine shows draw when busy (a
    VM: its vCPUs' share of the host's TDP), times ``share``.

    Args:
        tdp_w: TDP per socket in watts (None: look the CPU up, or 10 W per physical core), per
            socket that /proc/cpuinfo shows: in a VM, which shows the VM, give the VM's share of
            the host socket's TDP (TDP x vCPUs / the host's threads per socket).
        share: the fraction of the host's CPU power this sensor stands for (1/N when it replaces
            one of N RAPL packages).
        cpu_seconds: cumulative CPU-seconds of what is measured (default: this process tree).
        logical_cpus, cpu_model, sockets, physical_cores: the host (default: detected).
        cpuinfo_path: where the model, the sockets and whether this is a VM are read from.
        clock: monotonic seconds, for pacing the process tree's CPU time; injectable for tests.
        name, poll_interval_s: as for every sensor.
    """

    kind = Kind.CPU
    method = Method.ESTIMATED
    source = "TDP x CPU time"  # each instance says which TDP, or which default

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
        cpuinfo_path: str = CPUINFO_PATH,
        clock: Callable[[], float] = time.monotonic,
        name: str = "cpu",
        poll_interval_s: float | None = CPU_POLL_INTERVAL_S,
    ) -> None:
        self.share = _check_share(share)
        _check_callable("cpu_seconds", cpu_seconds)
        poll_interval_s = _check_poll_interval(poll_interval_s)
        if logical_cpus is None:
            logical_cpus = os.cpu_count() or 1
        if isinstance(logical_cpus, bool) or not isinstance(logical_cpus, int) or logical_cpus < 1:
            raise ValueError(f"logical_cpus must be >= 1, got {logical_cpus!r}")
        power = resolve_cpu_power(tdp_w, cpu_model=cpu_model, sockets=sockets, physical_cores=physical_cores,
                                  logical_cpus=logical_cpus, cpuinfo_path=cpuinfo_path)
        self.tdp_w = power.watts * self.share
        self.joules_per_cpu_second = power.watts / logical_cpus
        self.name = name
        self.scope = _TREE.scope() if cpu_seconds is None else "cpu"
        self.poll_interval_s = poll_interval_s
        self.note = power.note + (f"; {self.share:g} of the host" if self.share != 1 else "")
        if self.scope not in ("process tree", "cpu"):
            self.note += f"; CPU time of the {self.scope}"
        self.source = power.source
        self._cpu_seconds = cpu_seconds or process_tree_cpu_seconds
        self._reads_tree = cpu_seconds is None
        self._clock = clock
        self._lock = threading.Lock()
        self._base_cpu_s = self._read_cpu_seconds(exact=True)
        self._high_water_cpu_s = self._base_cpu_s
        self._read_at = clock()  # when the CPU time was last read (see poll)

    def _read_cpu_seconds(self, exact: bool = True) -> float:
        try:
            if exact or not self._reads_tree or not _TREE.has_live_children():
                return float(self._cpu_seconds())
            return _TREE.boundary_cpu_seconds()
        except Exception as error:  # noqa: BLE001 - psutil raises several unrelated types
            raise SensorError(f"{self.name}: cannot read CPU time: {error}") from error

    def _update(self, exact: bool = True) -> float:
        with self._lock:
            # Every read is at most the tree's CPU time so far (a child reaped between its listing
            # and its read drops out for a moment; one read late lacks its latest time): the
            # high-water mark keeps the total from dipping, and never holds more than was used.
            self._high_water_cpu_s = max(self._high_water_cpu_s, self._read_cpu_seconds(exact))
            # All of it, at once: a child born and reaped between two polls shows up when reaped,
            # in whatever phase that is (rare since the tree's new processes are taken in at each
            # poll); capping the pace instead left what the run's last read still held unbilled.
            self._read_at = self._clock()
            return self._joules()

    def _joules(self) -> float:
        return (self._high_water_cpu_s - self._base_cpu_s) * self.joules_per_cpu_second * self.share

    def energy_j(self) -> float:
        """Read at every boundary, on the training thread, without a /proc read: the process
        tree's CPU time costs one per live child (160 us for four DataLoader workers, on a
        training thread whose caches the step has just evicted), which the meter's thread makes
        every 0.1 s (``poll``). A boundary reads this process's own CPU time and its children's
        already waited for (two getrusage calls), and each child's CPU clock (Linux: a system call
        each; elsewhere its time as last read; see ``_ProcessTree.boundary_cpu_seconds``). So a
        phase gets its own CPU time, however short: carrying the tree's forward at the rate of
        the meter thread's latest read billed a 30 ms busy phase after an idle spell 0.02 J of
        3 J, and a phase after the workers' busy spell up to 2.5 x its CPU time, held as a floor
        for the next. Without children it is the two getrusage calls alone. A counter the caller
        gives is read in place."""
        return self._update(exact=False)

    def exact_energy_j(self) -> float:
        """A run's first and last boundary (``Meter.snapshot(exact=True)``): every child read
        now, so the run's total holds all of their time."""
        return self._update(exact=True)

    def poll(self) -> float:
        if self._reads_tree:
            _TREE.watch()  # on the meter's thread: take in the processes born in the tree
            if _TREE.has_live_children():
                return self._update(exact=True)  # a /proc read per child, kept for the boundaries
            if self._clock() - self._read_at < CPU_POLL_READ_S:
                return self._joules()  # read lately, at a boundary
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
    samples_when_read = True

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
        self.scope = _TREE.scope() if basis == "process" else "host"
        self.poll_interval_s = poll_interval_s
        memory = ("installed RAM" if basis == "host" else "resident memory of this process tree"
                  if self.scope == "process tree" else f"resident memory of the {self.scope}")
        self.note = f"{self.w_per_gb:g} W/GB x {memory}"
        self.source = f"{'resident memory' if basis == 'process' else 'installed RAM'} x {self.w_per_gb:g} W/GB" + (
            f" (the default, after {DEFAULT_RAM_W_PER_GB_SOURCE})" if self.w_per_gb == DEFAULT_RAM_W_PER_GB else "")
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
