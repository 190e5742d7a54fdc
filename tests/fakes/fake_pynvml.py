"""A faithful fake of ``pynvml`` (nvidia-ml-py 13.x) for machines without an NVIDIA GPU.

What is copied from the real module, by name and value: the ``NVML_*`` constants used here,
``NVMLError`` whose constructor returns the subclass for the code (``NVMLError(3)`` is an
``NVMLError_NotSupported``) with ``.value``, the subclasses generated with the same naming rule,
``c_nvmlFieldValue_t`` as a real ctypes structure (reading the wrong union member gives garbage,
as it would), and return shapes (``nvmlDeviceGetFieldValues`` returns a ctypes array and succeeds
as a whole while each field carries its own ``nvmlReturn``).

What is simulated: GPUs whose power the test sets (a constant or a function of time) on a fake
clock; the energy counter in mJ since "driver load", stepping only every 100 ms like the real one;
``nvmlDeviceGetPowerUsage`` as a 1-second average (Ampere and later); instantaneous power;
init reference counting (calls before ``nvmlInit`` fail with Uninitialized). Switches: counter
unsupported, instant field unsupported or failing with a code of its own, power usage unsupported,
an error on every call, GPU lost, counter reset (driver reload), counter updates off their grid,
init failing, library missing, MIG instances (each with its slices, on an H100's GPU-instance profiles; the MIG calls
have pynvml's names and signatures, checked against the installed pynvml by
tests/test_sensors_nvml.py).

Latency (``counter_latency``): an energy-counter read can take as long as on a real GPU
(``h100_counter_latency()``: 2.9 ms median, 15 ms p99). By default the read advances the fake clock
by that much, so tests never sleep; a benchmark on the real clock passes ``sleep=time.sleep``.
"""

from __future__ import annotations

import math
import random
import string
import sys
import threading
from collections import Counter
from ctypes import Structure, Union, c_char, c_double, c_int, c_int64, c_longlong, c_uint, c_uint32, c_ulong, c_ulonglong, c_ushort
from typing import Callable

from tests.fakes.scripted import FakeClock, PiecewisePower, PowerProfile

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186

NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

NVML_GPU_INSTANCE_PROFILE_1_SLICE = 0x0
NVML_GPU_INSTANCE_PROFILE_2_SLICE = 0x1
NVML_GPU_INSTANCE_PROFILE_3_SLICE = 0x2
NVML_GPU_INSTANCE_PROFILE_4_SLICE = 0x3
NVML_GPU_INSTANCE_PROFILE_7_SLICE = 0x4
NVML_GPU_INSTANCE_PROFILE_8_SLICE = 0x5
NVML_GPU_INSTANCE_PROFILE_6_SLICE = 0x6
NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1 = 0x7
NVML_GPU_INSTANCE_PROFILE_COUNT = 0x12
NVML_DEVICE_NAME_V2_BUFFER_SIZE = 96
nvmlGpuInstanceProfileInfo_v2 = 0x02000098


class NVMLError(Exception):
    """As in pynvml: ``NVMLError(code)`` constructs the subclass registered for ``code``."""

    _valClassMapping: dict[int, type] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(typ, value):
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return NVMLError._errcode_to_string.get(self.value, "NVML Error with code %d" % self.value)

    def __eq__(self, other) -> bool:
        return self.value == other.value

    __hash__ = Exception.__hash__


def _extract_errors_as_classes() -> None:
    # The real naming rule: NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost.
    this_module = sys.modules[__name__]
    for err_name in [x for x in dir(this_module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(err_name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        err_val = getattr(this_module, err_name)

        def gen_new(val):
            def new(typ, *args):
                return NVMLError.__new__(typ, val)

            return new

        new_error_class = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        new_error_class.__module__ = __name__
        setattr(this_module, class_name, new_error_class)
        NVMLError._valClassMapping[err_val] = new_error_class


_extract_errors_as_classes()


class c_nvmlValue_t(Union):
    _fields_ = [
        ("dVal", c_double),
        ("uiVal", c_uint),
        ("ulVal", c_ulong),
        ("ullVal", c_ulonglong),
        ("sllVal", c_longlong),
        ("siVal", c_int),
        ("usVal", c_ushort),
    ]


class c_nvmlFieldValue_t(Structure):
    _fields_ = [
        ("fieldId", c_uint32),
        ("scopeId", c_uint32),
        ("timestamp", c_int64),
        ("latencyUsec", c_int64),
        ("valueType", c_uint),
        ("nvmlReturn", c_uint),
        ("value", c_nvmlValue_t),
    ]


class c_nvmlDeviceAttributes(Structure):
    _fields_ = [
        ("multiprocessorCount", c_uint),
        ("sharedCopyEngineCount", c_uint),
        ("sharedDecoderCount", c_uint),
        ("sharedEncoderCount", c_uint),
        ("sharedJpegCount", c_uint),
        ("sharedOfaCount", c_uint),
        ("gpuInstanceSliceCount", c_uint),
        ("computeInstanceSliceCount", c_uint),
        ("memorySizeMB", c_ulonglong),
    ]


class c_nvmlGpuInstanceProfileInfo_v2_t(Structure):
    _fields_ = [
        ("version", c_uint),
        ("id", c_uint),
        ("isP2pSupported", c_uint),
        ("sliceCount", c_uint),
        ("instanceCount", c_uint),
        ("multiprocessorCount", c_uint),
        ("copyEngineCount", c_uint),
        ("decoderCount", c_uint),
        ("encoderCount", c_uint),
        ("jpegCount", c_uint),
        ("ofaCount", c_uint),
        ("memorySizeMB", c_ulonglong),
        ("name", c_char * NVML_DEVICE_NAME_V2_BUFFER_SIZE),
    ]


# GPU-instance profiles of an H100 80GB (nvidia-smi mig -lgip): profile -> slices. 7 slices in all;
# 1g.20gb is the 1-slice REV1 profile.
H100_MIG_PROFILES = {
    NVML_GPU_INSTANCE_PROFILE_1_SLICE: 1,
    NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: 1,
    NVML_GPU_INSTANCE_PROFILE_2_SLICE: 2,
    NVML_GPU_INSTANCE_PROFILE_3_SLICE: 3,
    NVML_GPU_INSTANCE_PROFILE_4_SLICE: 4,
    NVML_GPU_INSTANCE_PROFILE_7_SLICE: 7,
}
H100_SMS_PER_SLICE = 16  # 1g.10gb has 16 of the MIG-enabled H100's 112 usable SMs



class LognormalLatency:
    """Seconds per call drawn from a log-normal with the given median and 99th percentile."""

    Z99 = 2.3263478740408408  # standard normal 99th percentile

    def __init__(self, median_s: float, p99_s: float, seed: int = 0) -> None:
        self.median_s, self.p99_s = median_s, p99_s
        self._mu, self._sigma = math.log(median_s), math.log(p99_s / median_s) / self.Z99
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:  # random.Random is not safe to share between threads
            return self._random.lognormvariate(self._mu, self._sigma)


# nvmlDeviceGetTotalEnergyConsumption measured on an H100 (benchmarks/RESULTS.md section 5).
H100_COUNTER_MEDIAN_S, H100_COUNTER_P99_S = 0.0029, 0.015


def h100_counter_latency(seed: int = 0) -> LognormalLatency:
    return LognormalLatency(H100_COUNTER_MEDIAN_S, H100_COUNTER_P99_S, seed)

COUNTER_UPDATE_PERIOD_S = 0.1


class FakeGpu(PiecewisePower):
    """One simulated physical GPU. Power is piecewise: a constant or a function of time each piece."""

    def __init__(
        self,
        clock: FakeClock,
        uuid: str,
        name: str = "NVIDIA H100 80GB HBM3",
        power_w: PowerProfile = 100.0,
        energy_at_start_mj: int = 987_654_321,
    ) -> None:
        super().__init__(clock, power_w)
        self.uuid = uuid
        self.name = name
        self.created_at = clock()
        self._counter_origin_t = self.created_at  # when the counter last started from _counter_offset_mj
        self._counter_offset_mj = energy_at_start_mj
        self.counter_supported = True
        self.instant_supported = True
        self.instant_error: int | None = None  # the instantaneous field's own return code while set
        self.power_usage_supported = True
        self.error_code: int | None = None  # every device call fails with this code while set
        # Each counter update up to this far (s) either side of its 100 ms grid, drawn per update:
        # a counter that does not step at a steady period (the meter's phase search gives up).
        self.counter_jitter_s = 0.0
        self._misreads: list[int] = []
        self.mig_instances: list[FakeMigDevice] = []
        self.handle = FakeHandle(self)

    # -- what the test controls ----------------------------------------------------------

    def lose(self) -> None:
        """The GPU falls off the bus: every call now fails with GPU is lost."""
        self.error_code = NVML_ERROR_GPU_IS_LOST

    def reset_counter(self) -> None:
        """The driver reloads: the energy counter restarts from 0 now."""
        self._counter_origin_t = self.clock()
        self._counter_offset_mj = 0

    def misread(self, off_by_mj: int) -> None:
        """The next counter read alone is off by ``off_by_mj`` (a glitch); the counter is not."""
        self._misreads.append(off_by_mj)

    def step_back(self, mj: int) -> None:
        """The counter itself falls back by ``mj`` and counts on from there (no restart)."""
        self._counter_offset_mj -= mj

    def add_mig_instance(self, uuid: str, slices: int = 1, compute_slices: int | None = None) -> FakeMigDevice:
        """A MIG device: a GPU instance of ``slices`` slices holding one compute instance of
        ``compute_slices`` (default: all of them). GPU-instance ids count from 1 as NVML's do."""
        if slices not in H100_MIG_PROFILES.values():
            raise ValueError(f"no H100 GPU-instance profile has {slices} slices")
        instance = FakeMigDevice(self, uuid, slices, compute_slices or slices, gpu_instance_id=len(self.mig_instances) + 1)
        self.mig_instances.append(instance)
        return instance

    # -- what NVML reports ----------------------------------------------------------------

    def counter_mj(self) -> int:
        now = self.clock()
        # The counter steps every 100 ms after it started; between steps it holds its value.
        steps = math.floor((now - self._counter_origin_t) / COUNTER_UPDATE_PERIOD_S + 1e-9)
        last_update = self._counter_origin_t + steps * COUNTER_UPDATE_PERIOD_S
        if self.counter_jitter_s:
            steps += 1  # the next update, moved early, may have come already; this one, late, not yet
            while steps > 0 and self._update_at(steps) > now:
                steps -= 1
            last_update = self._update_at(steps) if steps > 0 else self._counter_origin_t
        misread = self._misreads.pop(0) if self._misreads else 0
        return self._counter_offset_mj + int(1000.0 * self.energy_between_j(self._counter_origin_t, last_update)) + misread

    def _update_at(self, step: int) -> float:
        jitter = random.Random(step).uniform(-self.counter_jitter_s, self.counter_jitter_s)
        return self._counter_origin_t + step * COUNTER_UPDATE_PERIOD_S + jitter

    def instant_power_mw(self) -> int:
        return int(round(1000.0 * self.power_at(self.clock())))

    def averaged_power_mw(self) -> int:
        now = self.clock()
        return int(round(1000.0 * self.energy_between_j(now - 1.0, now)))


class FakeMigDevice:
    def __init__(self, parent: FakeGpu, uuid: str, slices: int = 1, compute_slices: int = 1, gpu_instance_id: int = 1) -> None:
        self.parent = parent
        self.uuid = uuid
        self.slices = slices
        self.compute_slices = compute_slices
        self.gpu_instance_id = gpu_instance_id
        self.compute_instance_id = 0
        self.name = f"{parent.name} MIG {slices}g.{10 * slices}gb"
        self.handle = FakeHandle(self)


class FakeHandle:
    """Stands in for ``c_nvmlDevice_t``: opaque to callers."""

    def __init__(self, device: FakeGpu | FakeMigDevice) -> None:
        self._device = device

    def __repr__(self) -> str:
        return f"<c_nvmlDevice_t {self._device.uuid}>"


class FakeNvml:
    """Use as the ``pynvml`` module: ``NvmlGpuSensor(..., pynvml=FakeNvml(clock))``.

    Constants and error classes are this module's (the same names as in pynvml); functions are
    methods so that each test has its own devices and switches.
    """

    def __init__(
        self,
        clock: FakeClock | Callable[[], float] | None = None,
        *,
        counter_latency: float | Callable[[], float] | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        """``counter_latency``: seconds each energy-counter read takes (a number or a draw, e.g.
        ``h100_counter_latency()``); spent with ``sleep``, by default advancing the fake clock."""
        self.clock = clock if clock is not None else FakeClock()
        self.counter_latency = counter_latency
        self._sleep = sleep if sleep is not None else getattr(self.clock, "advance", None)
        if counter_latency is not None and self._sleep is None:
            raise ValueError("counter_latency needs sleep= when the clock is not a FakeClock")
        self.gpus: list[FakeGpu] = []  # in NVML (PCI) index order
        self.init_error: int | None = None  # nvmlInit fails with this code while set
        self.library_missing = False
        self.init_count = 0  # NVML's reference count: inits minus shutdowns
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        # NVML_* constants, NVMLError and its subclasses, c_nvmlFieldValue_t: as in pynvml.
        try:
            return globals()[name]
        except KeyError:
            raise AttributeError(name) from None

    def add_gpu(self, uuid: str, **kwargs) -> FakeGpu:
        gpu = FakeGpu(self.clock, uuid, **kwargs)
        self.gpus.append(gpu)
        return gpu

    # -- init ---------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.library_missing:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)  # pynvml raises this when dlopen fails
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        with self._lock:
            self.init_count += 1

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        with self._lock:
            if self.init_count == 0:
                raise NVMLError(NVML_ERROR_UNINITIALIZED)
            self.init_count -= 1

    def nvmlErrorString(self, code: int) -> str:
        return NVMLError._errcode_to_string.get(code, "Unknown Error")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return "580.65.06"

    # -- devices ------------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index].handle

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeHandle:
        self._check_init()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu.handle
            for instance in gpu.mig_instances:
                if instance.uuid == uuid:
                    return instance.handle
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceIsMigDeviceHandle(self, handle: FakeHandle) -> c_uint:
        # The real binding returns the ctypes object, not an int.
        return c_uint(int(isinstance(self._device(handle, "nvmlDeviceIsMigDeviceHandle"), FakeMigDevice)))

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: FakeHandle) -> FakeHandle:
        device = self._device(handle, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        if not isinstance(device, FakeMigDevice):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return device.parent.handle

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        gpu = self._physical(handle, "nvmlDeviceGetMigMode")
        mode = NVML_DEVICE_MIG_ENABLE if gpu.mig_instances else NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        self._physical(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return max(H100_MIG_PROFILES.values())

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:
        gpu = self._physical(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if not 0 <= index < self.nvmlDeviceGetMaxMigDeviceCount(handle):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig_instances):
            raise NVMLError(NVML_ERROR_NOT_FOUND)  # no MIG device in that slot
        return gpu.mig_instances[index].handle

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeHandle) -> int:
        return self._mig(handle, "nvmlDeviceGetGpuInstanceId").gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeHandle) -> int:
        return self._mig(handle, "nvmlDeviceGetComputeInstanceId").compute_instance_id

    def nvmlDeviceGetAttributes(self, handle: FakeHandle) -> c_nvmlDeviceAttributes:
        # NVML documents this call for MIG device handles only.
        instance = self._mig(handle, "nvmlDeviceGetAttributes")
        attributes = c_nvmlDeviceAttributes()
        attributes.multiprocessorCount = H100_SMS_PER_SLICE * instance.compute_slices
        attributes.gpuInstanceSliceCount = instance.slices
        attributes.computeInstanceSliceCount = instance.compute_slices
        attributes.memorySizeMB = 10 * 1024 * instance.slices
        return attributes

    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: FakeHandle, profile: int, version: int = 2):
        gpu = self._physical(handle, "nvmlDeviceGetGpuInstanceProfileInfo")
        if version not in (1, 2):
            raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
        if not gpu.mig_instances or profile not in H100_MIG_PROFILES:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # MIG disabled, or a profile this GPU lacks
        slices = H100_MIG_PROFILES[profile]
        info = c_nvmlGpuInstanceProfileInfo_v2_t(version=nvmlGpuInstanceProfileInfo_v2)
        info.id, info.sliceCount, info.instanceCount = profile, slices, 7 // slices
        info.multiprocessorCount = H100_SMS_PER_SLICE * slices
        info.memorySizeMB = 10 * 1024 * slices
        info.name = f"MIG {slices}g.{10 * slices}gb".encode()
        return info

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        gpu = self._physical(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if not gpu.counter_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if self.counter_latency is None:
            return gpu.counter_mj()
        latency = self.counter_latency() if callable(self.counter_latency) else float(self.counter_latency)
        # The value is taken somewhere inside the call: here, in its middle.
        self._sleep(latency / 2)
        value = gpu.counter_mj()
        self._sleep(latency / 2)
        return value

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        gpu = self._physical(handle, "nvmlDeviceGetPowerUsage")
        if not gpu.power_usage_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.averaged_power_mw()

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: list) -> object:
        gpu = self._physical(handle, "nvmlDeviceGetFieldValues")
        values = (c_nvmlFieldValue_t * len(fieldIds))()
        now_us = int(self.clock() * 1e6)
        for value, field_id in zip(values, fieldIds):
            if isinstance(field_id, tuple):
                value.fieldId, value.scopeId = field_id
            else:
                value.fieldId = field_id
            value.timestamp = now_us
            if value.fieldId == NVML_FI_DEV_POWER_INSTANT and gpu.instant_error is not None:
                value.nvmlReturn = gpu.instant_error  # the call succeeds; this field alone fails
            elif value.fieldId == NVML_FI_DEV_POWER_INSTANT and gpu.instant_supported:
                value.valueType = NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = gpu.instant_power_mw()
                value.nvmlReturn = NVML_SUCCESS
            elif value.fieldId == NVML_FI_DEV_POWER_AVERAGE and gpu.power_usage_supported:
                value.valueType = NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = gpu.averaged_power_mw()
                value.nvmlReturn = NVML_SUCCESS
            else:
                value.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
        return values

    # -- helpers ------------------------------------------------------------------------------

    def _check_init(self) -> None:
        if self.init_count == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _device(self, handle: FakeHandle, call: str) -> FakeGpu | FakeMigDevice:
        self.calls[call] += 1
        self._check_init()
        if not isinstance(handle, FakeHandle):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        device = handle._device
        gpu = device.parent if isinstance(device, FakeMigDevice) else device
        if gpu.error_code is not None:
            raise NVMLError(gpu.error_code)
        return device

    def _mig(self, handle: FakeHandle, call: str) -> FakeMigDevice:
        device = self._device(handle, call)
        if not isinstance(device, FakeMigDevice):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return device

    def _physical(self, handle: FakeHandle, call: str) -> FakeGpu:
        device = self._device(handle, call)
        if isinstance(device, FakeMigDevice):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # power and energy exist per physical GPU only
        return device


def gpu_uuid(n: int) -> str:
    """A realistic, distinct UUID for fake GPU ``n``."""
    return f"GPU-{n:08x}-1111-2222-3333-{n * 7919:012x}"
