"""NVIDIA GPUs through NVML (the ``pynvml`` module of ``nvidia-ml-py``).

Three ways to know a GPU's energy, best first:

1. ``nvmlDeviceGetTotalEnergyConsumption``: a hardware counter in mJ since the driver loaded
   (Volta and later). Updated every 100 ms; one read costs 3-4 ms, so the meter reads it on its
   background thread every 100 ms (``off_thread``) and estimates each boundary from the latest
   read carried forward with the instantaneous power below.
2. ``NVML_FI_DEV_POWER_INSTANT`` through ``nvmlDeviceGetFieldValues``: instantaneous power
   (~5 us a read), sampled by the meter's background thread and integrated.
3. ``nvmlDeviceGetPowerUsage``: on Ampere and later a 1-second *average*, which lags every change
   of load (-5.6 % over an 8 s burst on an H100); used only when nothing better exists, and
   labelled so.

``pynvml`` is imported inside functions, never at module import, and any pynvml-like module can
be passed instead (the tests pass a fake).

Which GPUs: ``CUDA_VISIBLE_DEVICES`` decides what CUDA index ``i`` means. NVML enumerates in PCI
order, which need not be CUDA's, so every visible device is resolved to its NVML handle through
its UUID. Integers are taken as positions in NVML's (PCI) order, which is CUDA's order on nodes
whose GPUs are all the same model (CUDA orders fastest first and breaks ties by PCI bus id) and
always with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. On a node of mixed models without it, CUDA's order is
taken from torch by UUID where this process has initialised CUDA through torch already, and
otherwise the doubt is said once.

MIG: energy and power are only reported for a whole physical GPU. A process given MIG instances
(``CUDA_VISIBLE_DEVICES=MIG-...``) measures the parent GPU and is billed its share by a stated
rule: the instances' compute slices over the GPU's slices (the slice count of its full-GPU
profile; 7 on an A100 or H100), labelled ``apportioned`` with the bound of ``sensors.share``.
Two visible instances of one GPU give one sensor billed both shares, not two sensors. A GPU in
MIG mode with no instance named is billed whole, labelled ``apportioned``, with the way to name
one. Checked against the fake ``pynvml`` only; no MIG GPU was available to verify it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from greencallbacks.sensors.base import Counter, Discovery, Kind, Method, SensorError, Unavailable
from greencallbacks.sensors.gpu import MAX_GPU_POWER_W, GpuSensor
from greencallbacks.sensors.share import Apportioned, warn_once

COUNTER_UPDATE_PERIOD_S = 0.1  # NVML's total-energy counter steps every 100 ms (measured on an H100)
SAMPLE_INTERVAL_S = 0.05  # instantaneous power: 20 samples a second cost ~0.1 ms of a background thread
AVERAGED_POWER_WINDOW_S = 1.0  # nvmlDeviceGetPowerUsage averages over 1 s on Ampere and later
AVERAGED_POWER_NOTE = "1-second averaged power (no energy counter, no instantaneous power): lags load changes"

INSTALL_FIX = "install the NVML bindings: pip install 'greencallbacks[nvidia]' (nvidia-ml-py)"

# pynvml constants, by value, for modules (or old versions) that lack a name.
_NVML_SUCCESS = 0
_NVML_FI_DEV_POWER_INSTANT = 186
_VALUE_MEMBER_BY_TYPE = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def import_pynvml() -> Any:
    """The real ``pynvml``; raises ``ImportError`` with the fix when it is not installed."""
    try:
        import pynvml
    except ImportError as error:
        raise ImportError(f"pynvml is not importable ({error}); {INSTALL_FIX}") from error
    return pynvml


def _text(value: str | bytes) -> str:
    # Old pynvml versions return bytes.
    return value.decode() if isinstance(value, bytes) else str(value)


def _field_number(field_value: Any) -> float:
    """The number in a ``c_nvmlFieldValue_t``, read from the union member its ``valueType`` names."""
    member = _VALUE_MEMBER_BY_TYPE.get(int(field_value.valueType))
    if member is None:
        raise SensorError(f"NVML field {field_value.fieldId} has unknown value type {field_value.valueType}")
    return float(getattr(field_value.value, member))


class NvmlGpuSensor(GpuSensor):
    """One physical NVIDIA GPU.

    ``method`` is ``counter`` when the energy counter is supported, else ``sampled`` (power
    integrated by the background thread and once more at every boundary read).

    Args:
        handle: the NVML device handle of the physical GPU.
        index: the CUDA-visible index this process knows the GPU by; names it ``gpu<index>``.
        pynvml: the NVML module (default: the real ``pynvml``, already initialised by the caller).
        clock: monotonic seconds; injectable for tests.
        note: a caveat to carry into records (e.g. a MIG instance measured through its parent).
        shutdown_on_close: call ``nvmlShutdown`` once in ``close`` (balances one ``nvmlInit``).
        sample_interval_s: poll interval when power has to be sampled.
    """

    library = "NVML"
    no_power = "reports no power reading for this GPU"

    def __init__(
        self,
        handle: Any,
        *,
        index: int,
        pynvml: Any = None,
        clock: Callable[[], float] = time.monotonic,
        note: str = "",
        shutdown_on_close: bool = False,
        sample_interval_s: float = SAMPLE_INTERVAL_S,
        use_counter: bool = True,
    ) -> None:
        self._nvml = pynvml if pynvml is not None else import_pynvml()
        super().__init__(handle, index=index, clock=clock, shutdown_on_close=shutdown_on_close)
        self._identify(
            lambda: (_text(self._nvml.nvmlDeviceGetUUID(handle)), _text(self._nvml.nvmlDeviceGetName(handle)))
        )
        if _is_mig_handle(self._nvml, handle):
            raise SensorError(
                f"{self.name}: {self.scope} is a MIG instance, for which NVML reports no energy or power; "
                "find_nvml_gpus measures its physical GPU and bills the instance's share"
            )

        self._read_power_w = self._choose_power_reader()
        # use_counter=False integrates power even where a counter exists (to compare the two,
        # or where a driver's counter is known to be wrong).
        first_mj = self._first_counter_reading() if use_counter else None
        notes = [note] if note else []
        self.sample_interval_s = sample_interval_s
        if first_mj is not None:
            # Millijoules; a step back is a driver reload restarting it from 0 (sensors.base.Counter).
            self._counter = Counter(first_mj, unit_j=1e-3, max_power_w=MAX_GPU_POWER_W, clock=clock,
                                    name=f"{self.name} ({self.scope})")
            self.method = Method.COUNTER
            self.update_period_s = COUNTER_UPDATE_PERIOD_S
            self.poll_interval_s = None
            self.off_thread = True  # a counter read costs ~3 ms (p99 ~15 ms): never on the training thread
        elif self._read_power_w is not None:
            # An averaged power lags by up to its window: that is the uncertainty of a boundary.
            self.update_period_s = self._power_window_s()
            if self.update_period_s:
                notes.append(AVERAGED_POWER_NOTE)
            self._use_sampled_power(sample_interval_s)
        else:
            raise SensorError(
                f"{self.name} ({self.model}, {self.scope}) reports neither energy nor power through NVML "
                "(common on some vGPU profiles); its energy cannot be measured"
            )
        self.note = "; ".join(notes)

    # -- the Sensor interface (the rest is GpuSensor's) ------------------------------------

    def _power_window_s(self) -> float:
        return AVERAGED_POWER_WINDOW_S if self._read_power_w == self._read_averaged_power_w else 0.0

    def power_now_w(self) -> float | None:
        # Only the instantaneous field (~4 us) is cheap and current; the 1-second average lags.
        return self._read_instant_power_w() if self._read_power_w == self._read_instant_power_w else None

    # -- what GpuSensor asks of a backend ---------------------------------------------------

    def _binding_error(self) -> type[BaseException]:
        return self._nvml.NVMLError

    def _is_unsupported(self, error: BaseException) -> bool:
        return _is_unsupported(self._nvml, error)

    def _is_transient(self, error: BaseException) -> bool:
        # A read that timed out or found the device busy: the next one usually works, and the
        # counter lost nothing meanwhile. GPU is lost, no permission and the like stay.
        codes = {getattr(self._nvml, name, None) for name in _TRANSIENT_ERRORS} - {None}
        return getattr(error, "value", None) in codes

    def _shut_down(self) -> None:
        self._nvml.nvmlShutdown()

    def _counter_j(self) -> float:
        raw_mj = int(self._call("energy counter", lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)))
        return self._counter.add(raw_mj)

    # -- internals --------------------------------------------------------------------------

    def _instant_power_mw(self) -> float:
        """Raises ``NVMLError`` (the field's own return code included)."""
        field_id = getattr(self._nvml, "NVML_FI_DEV_POWER_INSTANT", _NVML_FI_DEV_POWER_INSTANT)
        field_value = self._nvml.nvmlDeviceGetFieldValues(self._handle, [field_id])[0]
        if field_value.nvmlReturn != getattr(self._nvml, "NVML_SUCCESS", _NVML_SUCCESS):
            # The call succeeds as a whole; each field carries its own status.
            raise self._nvml.NVMLError(field_value.nvmlReturn)
        return _field_number(field_value)

    def _read_instant_power_w(self) -> float:
        return self._call("instantaneous power", self._instant_power_mw) / 1000.0

    def _read_averaged_power_w(self) -> float:
        return self._call("power usage", lambda: self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0

    def _choose_power_reader(self) -> Callable[[], float] | None:
        candidates = (
            (self._instant_power_mw, self._read_instant_power_w),
            (lambda: self._nvml.nvmlDeviceGetPowerUsage(self._handle), self._read_averaged_power_w),
        )
        # A probe answers a number (never None) where the reading is supported.
        supported = (reader for probe, reader in candidates if self._if_supported("power reading", probe) is not None)
        return next(supported, None)

    def _first_counter_reading(self) -> int | None:
        raw = self._if_supported("energy counter", lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        return None if raw is None else int(raw)


def _is_mig_handle(nvml: Any, handle: Any) -> bool:
    try:
        is_mig = nvml.nvmlDeviceIsMigDeviceHandle(handle)  # a ctypes c_uint in the real binding
    except (AttributeError, nvml.NVMLError):
        return False  # a binding or GPU without MIG
    return bool(int(getattr(is_mig, "value", is_mig)))


_TRANSIENT_ERRORS = ("NVML_ERROR_TIMEOUT", "NVML_ERROR_UNKNOWN", "NVML_ERROR_IN_USE", "NVML_ERROR_NOT_READY",
                     "NVML_ERROR_INSUFFICIENT_RESOURCES")


def _is_unsupported(nvml: Any, error: BaseException) -> bool:
    """Errors that mean "this GPU or driver cannot do that", as opposed to a failure."""
    names = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_InvalidArgument")
    return any(isinstance(error, getattr(nvml, name, ())) for name in names)


# -- which GPUs this process uses -------------------------------------------------------------


class _Device:
    """An NVML device as CUDA_VISIBLE_DEVICES resolution needs it.

    ``error``: why NVML cannot use it (e.g. GPU is lost); then ``handle`` is None and ``uuid`` "".
    """

    def __init__(self, handle: Any, uuid: str, nvml_index: int = -1, error: BaseException | None = None) -> None:
        self.handle, self.uuid, self.nvml_index, self.error = handle, uuid, nvml_index, error


def _all_devices(nvml: Any) -> tuple[list[_Device], int]:
    """(the devices this process may use, in NVML order; how many it has no permission to use).

    ``nvmlDeviceGetCount`` counts every GPU of the node, also those ``nvmlDeviceGetHandleByIndex``
    refuses with NO_PERMISSION (NVML's documentation says so): typically another job's GPUs behind
    a cgroup device rule. CUDA cannot open those either and leaves them out of its enumeration, so
    they are dropped here too, which keeps integer positions (CUDA_VISIBLE_DEVICES entries, CUDA
    indices) pointing at the GPUs CUDA means. Any other per-device failure (a GPU that fell off the
    bus) keeps its position, the cautious guess (its node is still there for CUDA to count; not
    verified on a lost GPU), and is reported when this process wants it: one broken GPU must not
    stop the others being measured.
    """
    devices = []
    denied = 0
    no_permission = getattr(nvml, "NVMLError_NoPermission", ())
    for nvml_index in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
            devices.append(_Device(handle, _text(nvml.nvmlDeviceGetUUID(handle)), nvml_index))
        except no_permission:
            denied += 1
        except nvml.NVMLError as error:
            devices.append(_Device(None, "", nvml_index, error))
    return devices, denied


def _resolve_mig(nvml: Any, entry: str, devices: Sequence[_Device]) -> tuple[_Device, str] | None:
    """The parent GPU of a MIG instance named ``MIG-<uuid>`` or (old drivers) ``MIG-GPU-<uuid>/gi/ci``;
    None where NVML lists no such instance (CUDA cannot use it either)."""
    if entry.startswith("MIG-GPU-"):
        parent_uuid = entry[len("MIG-") :].split("/", 1)[0]
        parent = next((d for d in devices if d.uuid == parent_uuid), None)
        # The GPU exists, but its instance may not (a stale name, MIG mode off): its share could
        # not be read, and the whole GPU was billed to an instance CUDA never ran on.
        return (parent, entry) if parent is not None and _mig_instance_listed(nvml, parent, entry) else None
    try:
        mig_handle = nvml.nvmlDeviceGetHandleByUUID(entry)
        parent_handle = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig_handle)
        parent_uuid = _text(nvml.nvmlDeviceGetUUID(parent_handle))
    except nvml.NVMLError:
        return None
    return next(((d, entry) for d in devices if d.uuid == parent_uuid), None)


def _mig_handle(nvml: Any, parent: _Device, entry: str) -> Any:
    """The NVML handle of the MIG device ``entry`` names; raises ``NVMLError``."""
    if not entry.startswith("MIG-GPU-"):
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    # Old drivers name an instance MIG-GPU-<uuid>/<gpu instance id>/<compute instance id>.
    try:
        gi_id, ci_id = (int(part) for part in entry.split("/")[1:3])
    except ValueError:
        raise nvml.NVMLError(getattr(nvml, "NVML_ERROR_INVALID_ARGUMENT", 2)) from None
    for position in range(nvml.nvmlDeviceGetMaxMigDeviceCount(parent.handle)):
        try:
            handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent.handle, position)
        except nvml.NVMLError:
            continue  # an empty MIG slot
        if (nvml.nvmlDeviceGetGpuInstanceId(handle), nvml.nvmlDeviceGetComputeInstanceId(handle)) == (gi_id, ci_id):
            return handle
    raise nvml.NVMLError(getattr(nvml, "NVML_ERROR_NOT_FOUND", 6))


def _mig_instance_listed(nvml: Any, parent: _Device, entry: str) -> bool:
    """Whether NVML lists the MIG device ``entry`` names; True where it cannot tell (a binding
    without the MIG calls, a GPU in an error state, another failure), which is billed as before."""
    if parent.handle is None:
        return True
    try:
        _mig_handle(nvml, parent, entry)
    except AttributeError:
        return True
    except nvml.NVMLError as error:
        missing = tuple(getattr(nvml, name, ()) for name in ("NVMLError_NotFound", "NVMLError_InvalidArgument"))
        return not isinstance(error, missing)
    return True


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    try:
        current_mode = nvml.nvmlDeviceGetMigMode(handle)[0]
    except (AttributeError, nvml.NVMLError):
        return False  # a GPU or binding without MIG
    return current_mode == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)


def _gpu_slice_count(nvml: Any, handle: Any) -> int:
    """A MIG-enabled GPU's compute slices: the largest slice count of its GPU-instance profiles."""
    counts = []
    for profile in range(getattr(nvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0x12)):
        try:
            counts.append(int(nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile).sliceCount))
        except nvml.NVMLError:
            continue  # a profile this GPU does not offer
    if not counts:
        raise nvml.NVMLError(getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3))
    return max(counts)


def mig_share(nvml: Any, parent: _Device, entries: Sequence[str]) -> tuple[float, str]:
    """(share, rule): the MIG instances' compute slices over their GPU's. Raises ``NVMLError``."""
    slices = 0
    for entry in dict.fromkeys(entries):
        handle = _mig_handle(nvml, parent, entry)
        if not _is_mig_handle(nvml, handle):
            raise nvml.NVMLError(getattr(nvml, "NVML_ERROR_INVALID_ARGUMENT", 2))
        slices += int(nvml.nvmlDeviceGetAttributes(handle).computeInstanceSliceCount)
    total = _gpu_slice_count(nvml, parent.handle)
    names = ", ".join(dict.fromkeys(entries))
    return min(1.0, slices / total), f"MIG {names}: {slices} of the GPU's {total} compute slices"


_warned_shares: set[tuple[str, float]] = set()


def _say_apportioned_once(sensor: Apportioned, rule: str) -> None:
    warn_once(
        _warned_shares,
        sensor,
        f"greencallbacks: {sensor.name} is a MIG instance of GPU {sensor.scope}; NVML measures only the "
        f"whole GPU, so this process is billed {sensor.share:.3g} of it ({rule}), labelled 'apportioned' "
        f"with an uncertainty of +/-{sensor.relative_uncertainty:.0%} of what it bills.",
    )


def _resolve_entry(nvml: Any, entry: str, devices: Sequence[_Device]) -> tuple[_Device, str] | None:
    """One CUDA_VISIBLE_DEVICES entry -> (physical device, MIG instance or ""); None if invalid."""
    if entry.startswith("MIG-"):
        return _resolve_mig(nvml, entry, devices)
    if entry.startswith("GPU-"):
        # CUDA accepts any unambiguous prefix of a UUID.
        matches = [d for d in devices if d.uuid.startswith(entry)]
        return (matches[0], "") if len(matches) == 1 else None
    try:
        position = int(entry)
    except ValueError:
        return None
    return (devices[position], "") if 0 <= position < len(devices) else None


def parse_visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES; None when unset (every GPU is visible)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def find_nvml_gpus(
    device_indices: Sequence[int] | None = None,
    environ: Mapping[str, str] = os.environ,
    pynvml: Any = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Discovery:
    """The GPUs this process uses, as sensors, and those it could not use with the reason.

    ``device_indices`` are CUDA-visible indices (as in ``cuda:1``); None means every visible GPU.
    """
    found = Discovery()
    entries = parse_visible_devices(environ)
    if entries is not None and (not entries or entries[0] == "-1"):
        found.unavailable.append(
            Unavailable("gpu", Kind.GPU, f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r} hides every GPU")
        )
        return found

    if pynvml is None:
        try:
            pynvml = import_pynvml()
        except ImportError:
            found.unavailable.append(
                Unavailable("gpu", Kind.GPU, "the NVML Python bindings (nvidia-ml-py) are not installed", INSTALL_FIX)
            )
            return found
    nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        found.unavailable.append(_init_failure(nvml, error))
        return found
    except OSError as error:  # a broken library can fail below NVML's own error handling
        reason = f"NVML could not be loaded: {error}"
        found.unavailable.append(Unavailable("gpu", Kind.GPU, reason, "check the NVIDIA driver installation"))
        return found

    try:
        _find_visible(nvml, entries, device_indices, environ, clock, found)
    except nvml.NVMLError as error:
        reason = f"NVML could not list the GPUs: {error}"
        found.unavailable.append(Unavailable("gpu", Kind.GPU, reason, "check that nvidia-smi works"))
    finally:
        try:
            nvml.nvmlShutdown()  # balances the init above; each sensor holds its own
        except nvml.NVMLError:
            pass
    return found


def _find_visible(
    nvml: Any,
    entries: list[str] | None,
    device_indices: Sequence[int] | None,
    environ: Mapping[str, str],
    clock: Callable[[], float],
    found: Discovery,
) -> None:
    devices, denied = _all_devices(nvml)
    if entries is None:
        visible: list[tuple[_Device, str]] = [(d, "") for d in devices]
    else:
        visible = []
        for position, entry in enumerate(entries):
            resolved = _resolve_entry(nvml, entry, devices)
            if resolved is None:
                # CUDA itself stops at the first invalid entry: what follows is invisible to it too.
                what = "MIG instance that NVML lists" if entry.startswith("MIG-") else "GPU that NVML knows"
                found.unavailable.append(
                    Unavailable(
                        f"gpu{position}",
                        Kind.GPU,
                        f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no {what}; "
                        "CUDA ignores it and every entry after it",
                        "list indices, GPU-<uuid> or MIG-<uuid> values from `nvidia-smi -L`",
                    )
                )
                break
            visible.append(resolved)

    if _order_in_doubt(nvml, entries, devices, environ):
        # CUDA's own order, where this process's CUDA is up already; else said (once).
        in_cuda_order = _cuda_order_from_torch(entries, devices, environ)
        if in_cuda_order is not None:
            visible = in_cuda_order
        else:
            _say_the_order_is_in_doubt(nvml, devices)
    wanted = range(len(visible)) if device_indices is None else device_indices
    measured_uuids: set[str] = set()
    # The MIG instances this process uses, per physical GPU: one sensor bills all of them.
    mig_entries: dict[str, list[str]] = {}
    for cuda_index in wanted:
        if 0 <= cuda_index < len(visible) and visible[cuda_index][1]:
            mig_entries.setdefault(visible[cuda_index][0].uuid, []).append(visible[cuda_index][1])
    for cuda_index in wanted:
        if not 0 <= cuda_index < len(visible):
            found.unavailable.append(
                Unavailable(
                    f"gpu{cuda_index}",
                    Kind.GPU,
                    f"CUDA device {cuda_index} does not exist: {len(visible)} GPU(s) visible "
                    f"(CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r})"
                    + (f"; {denied} more that this process has no permission to use" if denied else ""),
                    "pass the indices of the devices this process trains on",
                )
            )
            continue
        device, mig_instance = visible[cuda_index]
        if device.error is not None:
            found.unavailable.append(
                Unavailable(
                    f"gpu{cuda_index}",
                    Kind.GPU,
                    f"NVML cannot use GPU {device.nvml_index} (NVML index): {device.error}",
                    _device_error_fix(nvml, device.error),
                )
            )
            continue
        if device.uuid in measured_uuids:
            continue  # a second MIG instance of a GPU already measured
        nvml.nvmlInit()  # one init per sensor, balanced by its close()
        try:
            sensor = NvmlGpuSensor(device.handle, index=cuda_index, pynvml=nvml, clock=clock, shutdown_on_close=True)
        except SensorError as error:
            nvml.nvmlShutdown()
            found.unavailable.append(Unavailable(f"gpu{cuda_index}", Kind.GPU, str(error)))
            continue
        measured_uuids.add(device.uuid)
        if mig_instance:
            try:
                share, rule = mig_share(nvml, device, mig_entries[device.uuid])
            except (nvml.NVMLError, AttributeError) as error:  # AttributeError: a binding without MIG calls
                if isinstance(error, getattr(nvml, "NVMLError_NotFound", ())):
                    # An instance NVML no longer lists: CUDA cannot run on it, and its GPU's whole
                    # energy is other work's.
                    sensor.close()  # balances its init
                    found.unavailable.append(Unavailable(
                        f"gpu{cuda_index}", Kind.GPU,
                        f"MIG instance {mig_instance!r} is not listed by NVML ({error}): not billed, as billing its "
                        f"GPU {device.uuid} whole would count other work's energy",
                        "list MIG-<uuid> values from `nvidia-smi -L`"))
                    continue
                # No share known: bill the whole GPU (an over-count when it has other tenants), and say so.
                share, rule = 1.0, f"MIG slice counts unreadable ({error}): the whole GPU is billed"
            sensor = Apportioned(sensor, share, rule)
            _say_apportioned_once(sensor, rule)
        elif _mig_enabled(nvml, device.handle):
            # CUDA runs this process on one of the GPU's MIG instances, which one is not named.
            rule = (
                "MIG mode is on and CUDA_VISIBLE_DEVICES names no instance: the whole GPU is billed; "
                "set CUDA_VISIBLE_DEVICES=MIG-<uuid> (nvidia-smi -L) to bill the instance's share"
            )
            sensor = Apportioned(sensor, 1.0, rule)
            _say_apportioned_once(sensor, rule)
        found.sensors.append(sensor)


_ORDER_SAID: set[str] = set()  # the models warned of, once per process


def _order_in_doubt(nvml: Any, entries: list[str] | None, devices: Sequence["_Device"],
                    environ: Mapping[str, str]) -> bool:
    """Integer positions are NVML's (PCI) order, which is CUDA's only for GPUs of one model or with
    CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA's default numbers the fastest first, so on a workstation with
    two models cuda:0 may be NVML's second GPU, and the other one would be measured. The models
    that count are the node's, not the visible GPUs': CUDA_VISIBLE_DEVICES=0 on a node of two
    models names CUDA's fastest GPU, which may be NVML's GPU 1 (from the one visible GPU's model
    alone, that went unsaid)."""
    if environ.get("CUDA_DEVICE_ORDER", "").upper() == "PCI_BUS_ID":
        return False
    if entries is not None and not any(entry.strip().isdigit() for entry in entries):
        return False  # UUIDs name each GPU: no order involved
    return len(_models(nvml, devices)) > 1


def _models(nvml: Any, devices: Sequence["_Device"]) -> list[str]:
    try:
        return sorted({_text(nvml.nvmlDeviceGetName(d.handle)) for d in devices if d.handle is not None})
    except nvml.NVMLError:
        return []


def _cuda_order_from_torch(entries: list[str] | None, devices: Sequence["_Device"],
                           environ: Mapping[str, str]) -> list[tuple["_Device", str]] | None:
    """The visible GPUs in CUDA's order, by UUID, from torch where this process has imported it and
    initialised CUDA already (never imported or initialised here: that costs seconds and fixes the
    process's CUDA state before the user's code chose it). None where it cannot tell: no torch or
    no CUDA yet, an ``environ`` other than the one CUDA read, MIG instances, a UUID NVML lacks."""
    torch = sys.modules.get("torch")
    if torch is None or environ.get("CUDA_VISIBLE_DEVICES") != os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    if entries is not None and any(entry.startswith("MIG-") for entry in entries):
        return None
    try:
        cuda = torch.cuda
        if not cuda.is_initialized():
            return None
        uuids = [str(cuda.get_device_properties(i).uuid) for i in range(cuda.device_count())]
    except Exception:  # noqa: BLE001 - a torch without these calls, or CUDA failing: said instead
        return None
    by_uuid = {d.uuid: d for d in devices if d.uuid}
    # torch writes the UUID bare; NVML and CUDA_VISIBLE_DEVICES with GPU- in front.
    uuids = [uuid if uuid.startswith("GPU-") else f"GPU-{uuid}" for uuid in uuids]
    if not uuids or any(uuid not in by_uuid for uuid in uuids):
        return None
    return [(by_uuid[uuid], "") for uuid in uuids]


def _say_the_order_is_in_doubt(nvml: Any, devices: Sequence["_Device"]) -> None:
    key = ", ".join(_models(nvml, devices))
    if key in _ORDER_SAID:
        return
    _ORDER_SAID.add(key)
    from greencallbacks.meter import warn  # on first use: sensor modules load nothing beyond sensors.base

    warn(f"greencallbacks: GPUs of different models ({key}) and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA numbers the "
         "fastest first, NVML by PCI bus, so the GPU measured as gpuN may not be the one CUDA calls N (a "
         "CUDA_VISIBLE_DEVICES index too). Set CUDA_DEVICE_ORDER=PCI_BUS_ID (before CUDA starts), or "
         "CUDA_VISIBLE_DEVICES to GPU-<uuid> values.")


def _device_error_fix(nvml: Any, error: BaseException) -> str:
    if isinstance(error, getattr(nvml, "NVMLError_GpuIsLost", ())):
        return "the GPU fell off the bus: see `nvidia-smi` and the kernel log (Xid errors); a GPU reset or reboot recovers it"
    return "check that `nvidia-smi` lists this GPU"


def _init_failure(nvml: Any, error: BaseException) -> Unavailable:
    def is_(name: str) -> bool:
        return isinstance(error, getattr(nvml, name, ()))

    if is_("NVMLError_LibraryNotFound"):
        reason = f"NVML library (libnvidia-ml.so) not found: no NVIDIA driver on this machine ({error})"
        fix = "install the NVIDIA driver, or in a container run with the NVIDIA container toolkit (--gpus)"
    elif is_("NVMLError_DriverNotLoaded"):
        reason = f"the NVIDIA driver is not loaded ({error})"
        fix = "load the driver (nvidia-smi should list the GPUs)"
    elif is_("NVMLError_NoPermission"):
        reason = f"no permission to use NVML ({error})"
        fix = "run as a user allowed to access /dev/nvidia*"
    elif is_("NVMLError_LibRmVersionMismatch"):
        reason = f"NVML and kernel driver versions differ ({error})"
        fix = "reboot or reload the NVIDIA kernel module after a driver upgrade"
    else:
        reason = f"nvmlInit failed: {error}"
        fix = "check that nvidia-smi works"
    return Unavailable("gpu", Kind.GPU, reason, fix)
