"""AMD GPUs through amdsmi (the Python binding of ROCm's AMD SMI library).

Two ways to know a GPU's energy, best first:

1. ``amdsmi_get_energy_count``: the energy accumulator, a count of ``counter_resolution``
   microjoules (15.3 uJ on MI200 and MI300) since the driver loaded. Read at phase boundaries,
   and polled by the meter's background thread often enough that a 32-bit accumulator (older
   firmware's GPU metrics, 65.7 kJ at 15.3 uJ: two minutes at 500 W) cannot wrap twice unseen.
2. ``amdsmi_get_power_info``: socket power in watts, sampled by the background thread and
   integrated (as for an NVIDIA GPU without a counter). ``current_socket_power`` is instantaneous
   (MI300); where only ``average_socket_power`` exists (MI200) the average lags load changes and
   the records say so. Used where the counter is unsupported (amdsmi documents it as not
   supported in virtual-machine guests).

``amdsmi`` is imported inside functions, never at module import. Without ROCm's
``libamd_smi.so`` the binding prints to stdout and raises ``KeyError`` on import; both are
caught and turned into a reason and a fix.

Which GPUs: the HIP runtime numbers the GPUs a process sees (``cuda:N`` in a ROCm build of
PyTorch) after ``ROCR_VISIBLE_DEVICES`` (indices or ``GPU-<id>`` UUIDs) and then
``HIP_VISIBLE_DEVICES``, or ``CUDA_VISIBLE_DEVICES`` when that is unset, each counting within
what the previous one left. HIP's base order is that of ``hip_id``
(``amdsmi_get_gpu_enumeration_info``, amdsmi 6.4), else of KFD node ids (``amdsmi_get_gpu_kfd_info``, 6.3),
which need not be amd-smi's PCI order.

Two dies per board (MI250, MI250X): each die (GCD) is its own amdsmi processor and its own HIP
device, but the board's energy and power are reported on its first die only; the second reports
an accumulator of 0 (the test ROCm's own rocm-smi uses to name a "secondary die"). Such a die
is measured through the die before it in amd-smi order. One sensor per board: a process that
uses both dies is billed the board once; a process that uses one of its two dies is billed half
the board, labelled ``apportioned`` with the bound of ``sensors.share``, so that two processes
sharing a board never bill it twice.

Verified against the fake ``amdsmi`` of the tests only: no AMD GPU was available to check it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from greencallbacks.sensors.base import Counter, Discovery, Kind, Method, Sensor, SensorError, Unavailable
from greencallbacks.sensors.gpu import MAX_GPU_POWER_W, GpuSensor
from greencallbacks.sensors.share import Apportioned, warn_once

INSTALL_FIX = "install the AMD SMI bindings: pip install 'greencallbacks[amd]' (amdsmi, matching your ROCm version)"
LIBRARY_FIX = "install ROCm's amd-smi-lib package (it provides libamd_smi.so), or set ROCM_PATH to the ROCm install"

# amdsmi status codes (amdsmi_wrapper.AMDSMI_STATUS_*), by value: the binding exports them only in
# its ctypes wrapper, which cannot load without the library. Checked against the binding's source.
STATUS_INVAL = 1
STATUS_NOT_SUPPORTED = 2
STATUS_NOT_YET_IMPLEMENTED = 3
STATUS_FAIL_LOAD_MODULE = 4
STATUS_TIMEOUT = 8
STATUS_RETRY = 9
STATUS_NO_PERM = 10
STATUS_INTERRUPT = 11
STATUS_BUSY = 30
STATUS_INIT_ERROR = 18
STATUS_NOT_FOUND = 31
STATUS_DRIVER_NOT_LOADED = 34
STATUS_NO_DATA = 40

# Socket power in amdsmi_get_power_info, in the order the sensor prefers them (see AmdGpuSensor).
_POWER_KEYS = ("current_socket_power", "average_socket_power", "socket_power")
COUNTER_BITS_OLD = 32  # the accumulator of GPU metrics before v1 was 32 bits wide
COUNTER_UPDATE_PERIOD_S = 0.1  # not documented by AMD: an assumed bound, as NVML's counter period
SAMPLE_INTERVAL_S = 0.05  # socket power: 20 reads a second of a sysfs-backed value
WRAP_POLL_MAX_S = 10.0
WRAP_POLL_MIN_S = 1.0  # 2**32 counts of 15.3 uJ in 2 s would take 33 kW
# An accumulator that has not moved for this long while the board draws power has stopped (amdsmi
# on ROCm 6.0-6.1 gave one value for a whole process on MI100 and MI210: ROCm/amdsmi#22, #38,
# ROCm/rocm_smi_lib#180); at 15.3 uJ a count, a board idling at 30 W moves it 2 million times a second.
# (Well past any update period: the meter holds it FAILURES_BEFORE_DEGRADE reads more before it switches.)
FROZEN_AFTER_S = 2.0
# An accumulator that moves, but at under CRAWL_SHARE of the board's power read, through every
# interval between its reads of the last CRAWL_WINDOW_S, counts a share of the energy: amdsmi's on an
# MI100 gathered 1 J in 10 s while the board drew tens of watts (ROCm/amdsmi#38, ~100x low). The
# paces are taken over intervals of PACE_INTERVAL_S at least (the accumulator's updates quantise
# shorter ones), and only the latest one need be under the power read: a load starting at 300 W
# after a board idled at 0.5 W does not make the intervals before it crawl.
CRAWL_WINDOW_S = 5.0
CRAWL_SHARE = 0.05
PACE_INTERVAL_S = 0.5
DEFAULT_MAX_POWER_W = 1000.0  # above any Instinct board's limit (MI300X: 750 W), where none is reported
AVERAGED_POWER_NOTE = "averaged socket power (no energy counter, no instantaneous power): lags load changes"


class AmdSmiUnavailable(ImportError):
    """amdsmi cannot be used here; ``reason`` and ``fix`` say why and what to do."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason}; {fix}")
        self.reason, self.fix = reason, fix


def import_amdsmi() -> Any:
    """The real ``amdsmi``; raises ``AmdSmiUnavailable`` with the reason and the fix."""
    printed = io.StringIO()
    try:
        # The binding prints its library search failure to stdout on import: keep the user's
        # output clean and put the message in the reason instead.
        with contextlib.redirect_stdout(printed):
            import amdsmi
    except ImportError as error:
        reason = f"the AMD SMI Python bindings (amdsmi) are not installed ({error})"
        raise AmdSmiUnavailable(reason, INSTALL_FIX) from error
    except Exception as error:  # noqa: BLE001 - KeyError or OSError when libamd_smi.so is missing
        said = " ".join(printed.getvalue().split()) or f"{type(error).__name__}: {error}"
        reason = f"amdsmi is installed but ROCm's libamd_smi.so could not be loaded ({said})"
        raise AmdSmiUnavailable(reason, LIBRARY_FIX) from error
    return amdsmi


def error_code(error: BaseException) -> int | None:
    """The status code of an ``AmdSmiLibraryException``; None for other errors."""
    getter = getattr(error, "get_error_code", None)
    if getter is not None:
        try:
            return int(getter())
        except Exception:  # noqa: BLE001
            return None
    return getattr(error, "err_code", None)


def _text(error: BaseException) -> str:
    # AmdSmiLibraryException's text spans lines ("Error code:\n\t2 | AMDSMI_STATUS_..."): one line here.
    return " ".join(str(error).split())


_TRANSIENT_STATUSES = (STATUS_TIMEOUT, STATUS_RETRY, STATUS_INTERRUPT, STATUS_BUSY)


def _is_unsupported(error: BaseException) -> bool:
    return error_code(error) in (STATUS_NOT_SUPPORTED, STATUS_NOT_YET_IMPLEMENTED, STATUS_NO_DATA)


# What the library writes into a power field it has no value for; the binding says "N/A" instead
# from 6.1.1, while 6.1.0 hands the number over (65,535 W for an MI250X's current_socket_power).
NO_POWER_VALUE = 0xFFFF


def _watts(value: Any) -> float | None:
    """A power field of ``amdsmi_get_power_info``: watts, or None for "N/A" (0xFFFF in the struct)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value == NO_POWER_VALUE:
        return None
    return float(value)


def read_energy_count(smi: Any, handle: Any) -> tuple[int, float]:
    """(accumulator, resolution in uJ). The accumulator's key was ``power`` before amdsmi 6.3 (6.3.x
    gives both; 6.4 only ``energy_accumulator``)."""
    reading = smi.amdsmi_get_energy_count(handle)
    try:
        raw = reading["energy_accumulator"] if "energy_accumulator" in reading else reading["power"]
        return int(raw), float(reading["counter_resolution"])
    except (KeyError, TypeError, ValueError) as error:
        raise SensorError(f"amdsmi_get_energy_count answered {reading!r}, not the documented fields") from error


class AmdGpuSensor(GpuSensor):
    """One AMD GPU (a board: for a two-die board, the handle of its first die).

    ``method`` is ``counter`` with the energy accumulator, else ``sampled``.

    Args:
        handle: the amdsmi processor handle.
        index: the HIP-visible index this process knows the GPU by; names it ``gpu<index>``.
        amdsmi: the amdsmi module (default: the real one, already initialised by the caller).
        clock: monotonic seconds; injectable for tests.
        note: a caveat to carry into records.
        shutdown_on_close: call ``amdsmi_shut_down`` once in ``close`` (balances one ``amdsmi_init``).
        sample_interval_s: poll interval when power has to be sampled.
        use_counter: False integrates power even where the accumulator exists.
    """

    library = "amdsmi"
    no_power = "reports no socket power for this GPU"
    poll_reads_counter = True  # a 32-bit accumulator must be read at least twice per wrap

    def __init__(
        self,
        handle: Any,
        *,
        index: int,
        amdsmi: Any = None,
        clock: Callable[[], float] = time.monotonic,
        note: str = "",
        shutdown_on_close: bool = False,
        sample_interval_s: float = SAMPLE_INTERVAL_S,
        use_counter: bool = True,
    ) -> None:
        self._smi = amdsmi if amdsmi is not None else import_amdsmi()
        super().__init__(handle, index=index, clock=clock, shutdown_on_close=shutdown_on_close)
        self._identify(
            lambda: (
                str(self._smi.amdsmi_get_gpu_device_uuid(handle)),
                str(self._smi.amdsmi_get_gpu_asic_info(handle).get("market_name", "AMD GPU")),
            )
        )

        power = self._if_supported("power info", lambda: self._smi.amdsmi_get_power_info(handle))
        if power is None:
            power = {}
        # Instantaneous power first; then the average (MI200), which lags; last socket_power
        # (amdsmi 7), whose averaging is not documented: both labelled as averaged.
        self._power_key = next((k for k in _POWER_KEYS if _watts(power.get(k)) is not None), None)
        if self._power_key is not None:
            self._read_power_w = self._read_socket_power_w
        limit_w = _watts(power.get("power_limit")) or 0.0
        if not 0.0 < limit_w <= MAX_GPU_POWER_W:
            limit_w = DEFAULT_MAX_POWER_W  # absent, or in a unit other than the documented watts
        counter = self._first_counter_reading() if use_counter else None
        notes = [note] if note else []
        self.sample_interval_s = sample_interval_s
        if counter is not None:
            first, resolution_uj = counter
            self.method = Method.COUNTER
            self.update_period_s = COUNTER_UPDATE_PERIOD_S
            # A 32-bit accumulator wraps after 2**32 counts: read it at least twice per wrap at the
            # board's power limit so that no wrap passes unseen. A wider one is read every
            # WRAP_POLL_MIN_S all the same: a board lost mid-epoch then loses at most that much.
            wraps = first < 2**COUNTER_BITS_OLD
            if wraps:
                wrap_j = 2**COUNTER_BITS_OLD * resolution_uj / 1e6
                self.poll_interval_s = max(WRAP_POLL_MIN_S, min(WRAP_POLL_MAX_S, wrap_j / limit_w / 2))
            else:
                self.poll_interval_s = WRAP_POLL_MIN_S
            self._counter = Counter(first, unit_j=resolution_uj / 1e6, max_power_w=MAX_GPU_POWER_W,
                                    wrap_at=2**COUNTER_BITS_OLD if wraps else None, clock=clock,
                                    name=f"{self.name} ({self.scope})")
            self._moved = (first, clock())  # the latest raw count read, and when it was first read
            self._paces: collections.deque[tuple[int, float]] = collections.deque([(first, clock())])
            self._crawling: SensorError | None = None  # the accumulator found gathering a share of the power
        elif self._power_key is not None:
            self.update_period_s = self._power_window_s()
            if self.update_period_s:
                notes.append(AVERAGED_POWER_NOTE)
            self._use_sampled_power(sample_interval_s)
        else:
            raise SensorError(
                f"{self.name} ({self.model}, {self.scope}) reports neither an energy count nor socket power "
                "through amdsmi; its energy cannot be measured"
            )
        self.note = "; ".join(notes)

    # -- what GpuSensor asks of a backend (the Sensor interface is GpuSensor's) ------------

    def _binding_error(self) -> type[BaseException]:
        return self._smi.AmdSmiException

    def _power_window_s(self) -> float:
        # Socket power other than the current one is an average (MI200), taken as NVML's 1 s one.
        return 0.0 if self._power_key in (None, "current_socket_power") else 1.0

    def _is_unsupported(self, error: BaseException) -> bool:
        return _is_unsupported(error)

    def _is_transient(self, error: BaseException) -> bool:
        # A call the library asks to retry (its AmdSmiRetryException, AmdSmiTimeoutException) or that
        # found the device busy: held and read again, as an NVML timeout is. Taken as failures, a
        # 0.3 s outage stopped counting the GPU for the rest of the run (300 J of 900 J).
        return error_code(error) in _TRANSIENT_STATUSES

    def _error_text(self, error: BaseException) -> str:
        return _text(error)

    def _shut_down(self) -> None:
        self._smi.amdsmi_shut_down()

    def _counter_j(self) -> float:
        """Add what the accumulator gathered since the last read (caller holds the lock): a step
        back is a 32-bit accumulator's wrap, or a driver reload restarting it (sensors.base.Counter).
        Its resolution is the device's, read with the first count."""
        raw, _ = self._call("energy count", lambda: read_energy_count(self._smi, self._handle))
        self._check_moving(raw)
        total = self._counter.add(raw)
        if self._counter.wrap_at is None and (self.poll_interval_s or 0) > WRAP_POLL_MIN_S:
            self.poll_interval_s = WRAP_POLL_MIN_S  # past 2**32 counts: a wide accumulator after all
        return total

    # -- internals --------------------------------------------------------------------------

    def _check_moving(self, raw: int) -> None:
        """Raise a transient ``SensorError`` while the accumulator stands still past FROZEN_AFTER_S
        and the board's power reads above 0 W: taken as a count, it billed the GPU 0 J for the whole
        run, labelled ``counter``. Held as an outage, the meter reads the board on by its power
        (``sampled``, the span since its last moving read bridged and stated) once it persists,
        and counts it on if it moves again."""
        now = self._clock()
        if raw != self._moved[0]:
            self._moved = (raw, now)
            self._check_pace(raw, now)
            return
        still_s = now - self._moved[1]
        if still_s < FROZEN_AFTER_S or self._read_power_w is None:
            return
        try:
            watts = self._read_power_w()
        except SensorError:
            return  # nothing tells it from a board at 0 W
        if watts > 0:
            raise SensorError(f"{self.name} ({self.scope}): amdsmi's energy accumulator has not moved for "
                              f"{still_s:.3g} s while the board draws {watts:.4g} W", transient=True,
                              stalled_since=self._moved[1], watts=watts)

    def _check_pace(self, raw: int, now: float) -> None:
        """Raise a transient ``SensorError`` where the accumulator gathered under CRAWL_SHARE of the
        board's power through the last CRAWL_WINDOW_S (ROCm/amdsmi#38): taken as a count, the GPU was
        billed ~1 % of its energy, labelled ``counter``. As for one standing still, the meter reads the
        board on by its power once it persists, bridging the span from the read before the first slow
        interval at that power less what the accumulator gathered in it (exact at a steady power
        whenever within that interval it began to crawl)."""
        reads = self._paces  # (raw count, time) at least PACE_INTERVAL_S apart, over the last windows
        if now - reads[-1][1] < PACE_INTERVAL_S:
            if self._crawling is not None:  # held until a later interval keeps pace
                raise self._crawling
            return
        self._crawling = None
        if raw < reads[-1][0]:  # a wrap or a restart: paces from here on
            reads.clear()
        reads.append((raw, now))
        while len(reads) > 2 and now - reads[1][1] >= 2 * CRAWL_WINDOW_S:
            reads.popleft()
        if now - reads[0][1] < CRAWL_WINDOW_S or self._read_power_w is None:
            return
        try:
            slow_w = CRAWL_SHARE * self._read_power_w()
        except SensorError:
            return
        first_slow = len(reads) - 1
        while first_slow > 0 and (reads[first_slow][0] - reads[first_slow - 1][0]) * self._counter.unit_j < (
                slow_w * (reads[first_slow][1] - reads[first_slow - 1][1])):
            first_slow -= 1
        if first_slow == len(reads) - 1 or now - reads[first_slow][1] < CRAWL_WINDOW_S:
            return
        since_raw, since = reads[max(0, first_slow - 1)]
        watts, gathered_w = slow_w / CRAWL_SHARE, (raw - since_raw) * self._counter.unit_j / (now - since)
        self._crawling = SensorError(
            f"{self.name} ({self.scope}): amdsmi's energy accumulator has gathered under {CRAWL_SHARE:.0%} of the "
            f"board's {watts:.4g} W for {now - reads[first_slow][1]:.3g} s (as ROCm/amdsmi#38)", transient=True,
            stalled_since=since, watts=max(0.0, watts - gathered_w))
        raise self._crawling

    def _read_socket_power_w(self) -> float:
        power = self._call("power info", lambda: self._smi.amdsmi_get_power_info(self._handle))
        watts = _watts(power.get(self._power_key))
        if watts is None:
            raise SensorError(f"{self.name} ({self.scope}): amdsmi {self._power_key} became N/A")
        return watts

    def _first_counter_reading(self) -> tuple[int, float] | None:
        counter = self._if_supported("energy count", lambda: read_energy_count(self._smi, self._handle))
        return counter if counter is not None and counter[1] > 0 else None


# -- which GPUs this process uses -------------------------------------------------------------


class _Die:
    """One amdsmi GPU processor (a die, or a whole single-die GPU) as device mapping needs it."""

    def __init__(self, smi: Any, handle: Any, smi_index: int) -> None:
        self.handle, self.smi_index = handle, smi_index
        self.uuid = str(smi.amdsmi_get_gpu_device_uuid(handle))
        # Names a user may put in a *_VISIBLE_DEVICES list: ROCr's GPU-<unique id>, HIP's UUID.
        self.names = {self.uuid.lower()}
        asic = _optional(smi, "amdsmi_get_gpu_asic_info", handle) or {}
        serial = str(asic.get("asic_serial", "")).lower()
        if serial.startswith("0x"):
            self.names.add("gpu-" + serial[2:])
        enumeration = _optional(smi, "amdsmi_get_gpu_enumeration_info", handle) or {}
        if enumeration.get("hip_uuid"):
            self.names.add(str(enumeration["hip_uuid"]).lower())
        self.hip_id = enumeration.get("hip_id") if isinstance(enumeration.get("hip_id"), int) else None
        kfd = _optional(smi, "amdsmi_get_gpu_kfd_info", handle) or {}
        self.node_id = kfd.get("node_id") if isinstance(kfd.get("node_id"), int) else None
        try:
            self.counter: int | None = read_energy_count(smi, handle)[0]
        except (smi.AmdSmiException, SensorError):
            self.counter = None
        power = _optional(smi, "amdsmi_get_power_info", handle) or {}
        reports_power = any((_watts(power.get(k)) or 0) > 0 for k in _POWER_KEYS)
        # A second die of a board: an accumulator of 0 (rocm-smi's own test), or, where the
        # accumulator is unsupported, no socket power at all (MI250X reports 0 W there).
        self.secondary = self.counter == 0 or (self.counter is None and not reports_power)

    def matches(self, entry: str) -> bool:
        entry = entry.lower()
        return any(name == entry or (entry.startswith("gpu-") and name.startswith(entry)) for name in self.names)


def _optional(smi: Any, function: str, handle: Any) -> Any:
    """A call that older bindings lack or some GPUs refuse: None instead of an error."""
    call = getattr(smi, function, None)
    if call is None:
        return None
    try:
        return call(handle)
    except smi.AmdSmiException:
        return None


ORDER_GUESSED = ("HIP's device order assumed to be amd-smi's: this amdsmi gives neither HIP's ids (amdsmi 6.4) "
                 "nor KFD node ids (6.3), so which GPU a device index names is a guess")
_warned_order: set[str] = set()


def _order_guessed(dies: list[_Die], layers: list[tuple[str, list[str]]], wanted: list[int], visible: int) -> bool:
    """Whether the GPUs picked by position (an index in a *_VISIBLE_DEVICES list, or this process's
    device among several) rest on an order this amdsmi cannot give (before 6.3: ROCm 6.1 and 6.2),
    where HIP's need not be amd-smi's. Warned once: with it the wrong GPU may be billed."""
    if len(dies) < 2 or all(d.hip_id is not None for d in dies) or all(d.node_id is not None for d in dies):
        return False
    by_position = any(entry.strip().lstrip("-").isdigit() for _, entries in layers for entry in entries)
    if not by_position and sorted(set(wanted)) == list(range(visible)):
        return False  # every GPU, each named by its id: their order does not change what is billed
    if ORDER_GUESSED not in _warned_order:
        _warned_order.add(ORDER_GUESSED)
        from greencallbacks.meter import warn  # on first use: sensor modules load nothing beyond sensors.base

        warn(f"greencallbacks: {ORDER_GUESSED}; upgrade amdsmi (ROCm 6.3+) or name the GPUs by UUID in "
             "ROCR_VISIBLE_DEVICES. Records carry this note.")
    return True


def _hip_order(dies: list[_Die]) -> list[_Die]:
    if all(d.hip_id is not None for d in dies):
        return sorted(dies, key=lambda d: d.hip_id)
    if all(d.node_id is not None for d in dies):
        return sorted(dies, key=lambda d: d.node_id)
    return list(dies)


def _boards(dies: list[_Die]) -> dict[int, list[_Die]]:
    """smi index of each die -> the dies of its board, first die first (amd-smi order)."""
    boards: dict[int, list[_Die]] = {}
    current: list[_Die] | None = None
    for die in dies:
        if die.secondary and current is not None:
            current.append(die)  # a secondary die: its energy is on the die before it
        else:
            current = [die]
        boards[die.smi_index] = current
    return boards


def _visibility_layers(environ: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """The lists HIP applies, in order: ROCr's, then HIP's (or CUDA's when HIP's is unset)."""
    layers = []
    if environ.get("ROCR_VISIBLE_DEVICES") is not None:
        layers.append(("ROCR_VISIBLE_DEVICES", environ["ROCR_VISIBLE_DEVICES"]))
    for variable in ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if environ.get(variable) is not None:
            layers.append((variable, environ[variable]))
            break
    return [(variable, [e.strip() for e in value.split(",") if e.strip()]) for variable, value in layers]


def _apply_layer(variable: str, entries: list[str], dies: list[_Die], found: Discovery) -> list[_Die]:
    visible: list[_Die] = []
    for entry in entries:
        try:
            position = int(entry)
            die = dies[position] if 0 <= position < len(dies) else None
        except ValueError:
            matches = [d for d in dies if d.matches(entry)]
            die = matches[0] if len(matches) == 1 else None
        if die is None:
            found.unavailable.append(
                Unavailable(
                    f"gpu{len(visible)}",
                    Kind.GPU,
                    f"{variable} entry {entry!r} matches none of the {len(dies)} AMD GPU(s) it can name; "
                    "it and every entry after it are ignored",
                    "list indices, or GPU-<id> values from `rocminfo` / `amd-smi list`",
                )
            )
            break
        visible.append(die)
    return visible


def find_amd_gpus(
    device_indices: Sequence[int] | None = None,
    environ: Mapping[str, str] = os.environ,
    amdsmi: Any = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Discovery:
    """The AMD GPUs this process uses, as sensors, and those it could not use with the reason.

    ``device_indices`` are HIP-visible indices (``cuda:1`` in a ROCm build of PyTorch); None means
    every visible GPU.
    """
    found = Discovery()
    layers = _visibility_layers(environ)
    for variable, entries in layers:
        if not entries or entries[0] == "-1":
            reason = f"{variable}={environ.get(variable)!r} hides every GPU"
            found.unavailable.append(Unavailable("gpu", Kind.GPU, reason))
            return found
    if amdsmi is None:
        try:
            amdsmi = import_amdsmi()
        except AmdSmiUnavailable as missing:
            found.unavailable.append(Unavailable("gpu", Kind.GPU, missing.reason, missing.fix))
            return found
    smi = amdsmi
    try:
        # The binding's default flag, AMD GPUs, in every release (`AmdSmiInitFlags.AMD_GPUS` in 5.5
        # and 5.6, `INIT_AMD_GPUS` since): it refuses a plain int with AmdSmiParameterException.
        smi.amdsmi_init()
    except smi.AmdSmiException as error:
        found.unavailable.append(_init_failure(error))
        return found
    try:
        _find_visible(smi, layers, device_indices, clock, found)
    except Exception as error:  # noqa: BLE001 - an amdsmi of another version must not stop training
        reason = f"amdsmi could not list the GPUs: {_text(error)}"
        found.unavailable.append(Unavailable("gpu", Kind.GPU, reason, "check that `amd-smi list` works"))
    finally:
        try:
            smi.amdsmi_shut_down()  # balances the init above; each sensor holds its own
        except smi.AmdSmiException:
            pass
    return found


def _find_visible(
    smi: Any,
    layers: list[tuple[str, list[str]]],
    device_indices: Sequence[int] | None,
    clock: Callable[[], float],
    found: Discovery,
) -> None:
    dies = [_Die(smi, handle, n) for n, handle in enumerate(smi.amdsmi_get_processor_handles())]
    if not dies:
        found.unavailable.append(
            Unavailable(
                "gpu", Kind.GPU, "amdsmi initialised but found no AMD GPU", "check that `amd-smi list` shows the GPUs"
            )
        )
        return
    boards = _boards(dies)
    visible = _hip_order(dies)
    for variable, entries in layers:
        visible = _apply_layer(variable, entries, visible, found)
    wanted = list(range(len(visible)) if device_indices is None else device_indices)
    guessed = _order_guessed(dies, layers, wanted, len(visible))
    for cuda_index in wanted:
        if not 0 <= cuda_index < len(visible):
            found.unavailable.append(
                Unavailable(
                    f"gpu{cuda_index}",
                    Kind.GPU,
                    f"HIP device {cuda_index} does not exist: {len(visible)} AMD GPU(s) visible",
                    "pass the indices of the devices this process trains on",
                )
            )
    used = [(i, visible[i]) for i in wanted if 0 <= i < len(visible)]
    measured: set[int] = set()
    for cuda_index, die in used:
        board = boards[die.smi_index]
        primary = board[0]
        if primary.smi_index in measured:
            continue  # the other die of a board already measured
        on_board = [i for i, d in used if boards[d.smi_index] is board]
        note = ""
        if len(board) > 1 and len(on_board) == len(board):
            note = f"one {len(board)}-die board: its energy covers {', '.join(f'gpu{i}' for i in on_board)}"
        if guessed:
            note = "; ".join(filter(None, (note, ORDER_GUESSED)))
        smi.amdsmi_init()  # one init per sensor, balanced by its close()
        try:
            sensor: Sensor = AmdGpuSensor(
                primary.handle, index=cuda_index, amdsmi=smi, clock=clock, note=note, shutdown_on_close=True
            )
        except SensorError as error:
            smi.amdsmi_shut_down()
            found.unavailable.append(Unavailable(f"gpu{cuda_index}", Kind.GPU, str(error)))
            continue
        measured.add(primary.smi_index)
        if len(on_board) < len(board):
            rule = (
                f"{len(on_board)} of the board's {len(board)} dies; the board's energy is reported on its first die "
                f"(amd-smi GPU {primary.smi_index})"
            )
            sensor = Apportioned(sensor, len(on_board) / len(board), rule)
            _say_apportioned_once(sensor, rule)
        found.sensors.append(sensor)


_warned_shares: set[tuple[str, float]] = set()


def _say_apportioned_once(sensor: Apportioned, rule: str) -> None:
    warn_once(
        _warned_shares,
        sensor,
        f"greencallbacks: {sensor.name} is one die of a multi-die AMD board whose energy is reported for the "
        f"whole board; this process is billed {sensor.share:.3g} of it ({rule}), labelled 'apportioned' with an "
        f"uncertainty of +/-{sensor.relative_uncertainty:.0%} of what it bills.",
    )


def _init_failure(error: BaseException) -> Unavailable:
    code, error = error_code(error), _text(error)
    if code == STATUS_NO_PERM:
        reason = f"no permission to use the AMD GPUs ({error})"
        fix = "add the user to the 'render' and 'video' groups (access to /dev/kfd and /dev/dri)"
    elif code == STATUS_DRIVER_NOT_LOADED:
        reason = f"the amdgpu driver is not loaded ({error})"
        fix = "load the amdgpu kernel module (amd-smi list should show the GPUs)"
    elif code in (STATUS_INIT_ERROR, STATUS_FAIL_LOAD_MODULE, STATUS_NOT_FOUND):
        reason = f"amdsmi_init failed: no usable AMD GPU or driver here ({error})"
        fix = "on an AMD GPU machine, install the amdgpu driver and ROCm; in a container pass /dev/kfd and /dev/dri"
    else:
        reason = f"amdsmi_init failed: {error}"
        fix = "check that `amd-smi list` works"
    return Unavailable("gpu", Kind.GPU, reason, fix)
