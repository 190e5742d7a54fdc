"""A faithful fake of ``amdsmi`` (AMD SMI's Python binding, 7.0) for machines without an AMD GPU.

Copied from the real binding, by name and value: the exception classes (``AmdSmiException``,
``AmdSmiLibraryException(err_code)`` with ``get_error_code`` / ``get_error_info`` and its
multi-line text, ``AmdSmiParameterException`` for a handle that is not one), the
``AMDSMI_STATUS_*`` codes, ``AmdSmiInitFlags``, and the names, parameters and return shapes of
the calls used: ``amdsmi_get_energy_count`` returns ``{'energy_accumulator', 'counter_resolution',
'timestamp'}`` (``'power'`` instead of ``'energy_accumulator'`` before 6.3.0, both in 6.3.x),
``amdsmi_get_power_info`` returns watts as ints and the string ``"N/A"`` where the struct holds
0xFFFF (amdsmi 6.1.0 returns the 0xFFFF itself). ``tests/test_sensors_amd.py`` checks these names
against the installed binding's source, whichever release is installed.

What is simulated: boards whose power the test sets on a fake clock; the energy accumulator in
counts of 15.3 uJ since "driver load", 64 bits wide or 32 bits (it wraps); two-die boards
(MI250X) whose energy and power are reported on the first die while the second reports an
accumulator of 0, ``current_socket_power`` "N/A" and ``average_socket_power`` 0; single-die MI300X
boards with instantaneous power and no average. HIP enumeration (``hip_id``) can differ from
amd-smi's order. Switches: counter unsupported, an error on every call, init failing, a binding
older than 6.4 (no ``amdsmi_get_gpu_enumeration_info``), or 6.3 (no ``amdsmi_get_gpu_kfd_info``).
"""

from __future__ import annotations

import enum
from collections import Counter

from tests.fakes.scripted import FakeClock, PiecewisePower, PowerProfile

AMDSMI_STATUS_SUCCESS = 0
AMDSMI_STATUS_INVAL = 1
AMDSMI_STATUS_NOT_SUPPORTED = 2
AMDSMI_STATUS_NOT_YET_IMPLEMENTED = 3
AMDSMI_STATUS_FAIL_LOAD_MODULE = 4
AMDSMI_STATUS_TIMEOUT = 8
AMDSMI_STATUS_RETRY = 9
AMDSMI_STATUS_NO_PERM = 10
AMDSMI_STATUS_INTERRUPT = 11
AMDSMI_STATUS_IO = 12
AMDSMI_STATUS_INIT_ERROR = 18
AMDSMI_STATUS_BUSY = 30
AMDSMI_STATUS_NOT_FOUND = 31
AMDSMI_STATUS_NOT_INIT = 32
AMDSMI_STATUS_DRIVER_NOT_LOADED = 34
AMDSMI_STATUS_NO_DATA = 40
AMDSMI_STATUS_UNKNOWN_ERROR = 4294967295

_ERROR_INFO = {
    AMDSMI_STATUS_INVAL: "AMDSMI_STATUS_INVAL - Invalid parameters",
    AMDSMI_STATUS_NOT_SUPPORTED: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
    AMDSMI_STATUS_NOT_YET_IMPLEMENTED: "AMDSMI_STATUS_NOT_YET_IMPLEMENTED - Feature not yet implemented",
    AMDSMI_STATUS_FAIL_LOAD_MODULE: "AMDSMI_STATUS_FAIL_LOAD_MODULE - Fail to load lib",
    AMDSMI_STATUS_TIMEOUT: "AMDSMI_STATUS_TIMEOUT - Timeout in API call",
    AMDSMI_STATUS_RETRY: "AMDSMI_STATUS_RETRY - Retry operation",
    AMDSMI_STATUS_NO_PERM: "AMDSMI_STATUS_NO_PERM - Permission Denied",
    AMDSMI_STATUS_INTERRUPT: "AMDSMI_STATUS_INTERRUPT - Interrupt ocurred during execution",
    AMDSMI_STATUS_IO: "AMDSMI_STATUS_IO - I/O Error",
    AMDSMI_STATUS_BUSY: "AMDSMI_STATUS_BUSY - Device busy",
    AMDSMI_STATUS_INIT_ERROR: "AMDSMI_STATUS_INIT_ERROR - Initialization error",
    AMDSMI_STATUS_NOT_FOUND: "AMDSMI_STATUS_NOT_FOUND - Device Not found",
    AMDSMI_STATUS_NOT_INIT: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
    AMDSMI_STATUS_DRIVER_NOT_LOADED: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded",
    AMDSMI_STATUS_NO_DATA: "AMDSMI_STATUS_NO_DATA - No data was found for given input",
}


class AmdSmiException(Exception):
    """Base smi exception class"""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code):
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.set_err_info()

    def __str__(self):
        return "Error code:\n\t{err_code} | {err_info}".format(err_code=self.err_code, err_info=self.err_info)

    def get_error_info(self, detailed=True):
        return self.err_info if detailed else str(self.err_info).split(" - ")[0]

    def get_error_code(self):
        return self.err_code

    def set_err_info(self):
        self.err_info = _ERROR_INFO.get(self.err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred")


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self):
        super().__init__(AMDSMI_STATUS_RETRY)


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self):
        super().__init__(AMDSMI_STATUS_TIMEOUT)


def _check_res(ret_code) -> None:
    """As the binding's: RETRY and TIMEOUT raise their own subclasses."""
    if ret_code == AMDSMI_STATUS_RETRY:
        raise AmdSmiRetryException()
    if ret_code == AMDSMI_STATUS_TIMEOUT:
        raise AmdSmiTimeoutException()
    raise AmdSmiLibraryException(ret_code)


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, receivedValue, expectedType, msg=None):
        super().__init__(msg)
        self.err_code = None
        self.err_msg = msg or f"Invalid parameter:\nActual type: {type(receivedValue)}\nExpected type: {expectedType}"

    def __str__(self):
        return self.err_msg


class AmdSmiInitFlags(enum.IntEnum):
    INIT_ALL_PROCESSORS = 4294967295
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2
    INIT_NON_AMD_CPUS = 4
    INIT_NON_AMD_GPUS = 8
    INIT_AMD_APUS = 3


NA = "N/A"
RESOLUTION_UJ = 15.3  # counter_resolution of MI200 and MI300 (uJ per count)


class FakeBoard(PiecewisePower):
    """One board (OAM module) with one die or two; its power is a constant or a function of time."""

    def __init__(self, clock: FakeClock, serial: int, model: str, dies: int, power_w: PowerProfile, counter_bits: int) -> None:
        super().__init__(clock, power_w)
        self.model = model
        self.counter_bits = counter_bits
        self._origin_t = clock()
        # The accumulator's value when the test starts: a wide one has run for a while since the
        # driver loaded (2**36 counts: 1.05 MJ, 35 min at 500 W); a 32-bit one is anywhere in its range.
        self._origin_counts = 2**36 + 7_654_321 if counter_bits > 32 else 7_654_321
        self.counter_supported = True
        self.error_code: int | None = None  # every call on this board fails with this code while set
        self._misreads: list[int] = []
        self.power_limit_w = 500 if dies == 2 else 750
        self.dies = [FakeDie(self, serial * 16 + n, n) for n in range(dies)]

    def misread(self, off_by_counts: int) -> None:
        """The next count read alone is off by ``off_by_counts`` (amdsmi has been seen to step an
        accumulator back by ~14e6 counts, ROCm/amdsmi#115); the accumulator is not."""
        self._misreads.append(off_by_counts)

    def freeze(self) -> None:
        """The accumulator stops moving from now on while the board draws power, as amdsmi's was
        seen to within a process on ROCm 6.0-6.1 (MI100, MI210: ROCm/amdsmi#22, #38,
        ROCm/rocm_smi_lib#180); its power reads go on."""
        self._frozen_counts = self.counts()

    def crawl(self, share: float) -> None:
        """The accumulator gathers only ``share`` of the board's energy from now on, its power reads
        right: ROCm/amdsmi#38 (MI100), an accumulator moving 1 J in 10 s while the board drew tens of
        watts."""
        self._crawl = (self.clock(), self.counts(), share)

    def counts(self) -> int:
        if getattr(self, "_frozen_counts", None) is not None:
            return self._frozen_counts
        if getattr(self, "_crawl", None) is not None:
            since, counts, share = self._crawl
            gathered = int(share * 1e6 * self.energy_between_j(since, self.clock()) / RESOLUTION_UJ)
            return (counts + gathered) % (2**self.counter_bits)
        total = self._origin_counts + int(1e6 * self.energy_between_j(self._origin_t, self.clock()) / RESOLUTION_UJ)
        total += self._misreads.pop(0) if self._misreads else 0
        return total % (2**self.counter_bits)


class FakeDie:
    """One amdsmi GPU processor: a die (GCD) of a board."""

    def __init__(self, board: FakeBoard, unique_id: int, position: int) -> None:
        self.board = board
        self.unique_id = unique_id
        self.position = position  # 0: the die that reports the board's energy and power
        self.hip_id = 0
        self.node_id = 0
        self.bdf = ""
        self.handle = FakeProcessorHandle(self)

    @property
    def uuid(self) -> str:
        return f"{self.unique_id:08x}-0000-1000-80ff-{self.unique_id:012x}"

    @property
    def rocr_uuid(self) -> str:
        """The UUID that ROCr and rocminfo show: GPU-<unique id in hex>."""
        return f"GPU-{self.unique_id:016x}"


class FakeProcessorHandle:
    """Stands in for ``amdsmi_processor_handle`` (a ctypes void pointer): opaque to callers."""

    def __init__(self, die: FakeDie) -> None:
        self._die = die

    def __repr__(self) -> str:
        return f"<amdsmi_processor_handle {self._die.uuid}>"


class FakeAmdSmi:
    """Use as the ``amdsmi`` module: ``find_amd_gpus(amdsmi=FakeAmdSmi(clock))``."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiParameterException = AmdSmiParameterException
    AmdSmiInitFlags = AmdSmiInitFlags

    def __init__(self, clock: FakeClock | None = None, *, version: str = "7.0.2") -> None:
        self.clock = clock if clock is not None else FakeClock()
        self.version = version
        self.boards: list[FakeBoard] = []
        self.init_error: int | None = None
        self.init_count = 0
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str):
        # Bindings before 6.4 lack the enumeration call (its hip_id; amdsmi 6.3.3 on PyPI has none,
        # 6.4.0 has it), and those before 6.3 the KFD info call (its node_id) too.
        version = tuple(int(part) for part in object.__getattribute__(self, "version").split(".")[:2])
        if (name == "amdsmi_get_gpu_enumeration_info" and version < (6, 4)) or (
                name == "amdsmi_get_gpu_kfd_info" and version < (6, 3)):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    # -- the machine ------------------------------------------------------------------------

    def add_board(
        self, model: str = "AMD Instinct MI300X", dies: int = 1, power_w: PowerProfile = 300.0, counter_bits: int = 64
    ) -> FakeBoard:
        board = FakeBoard(self.clock, len(self.boards) + 1, model, dies, power_w, counter_bits)
        self.boards.append(board)
        self._renumber()
        return board

    def mi250x(self, power_w: PowerProfile = 400.0, counter_bits: int = 64) -> FakeBoard:
        return self.add_board("AMD Instinct MI250X", dies=2, power_w=power_w, counter_bits=counter_bits)

    @property
    def dies(self) -> list[FakeDie]:
        """In amd-smi (PCI) order."""
        return [die for board in self.boards for die in board.dies]

    def set_hip_order(self, smi_indices: list[int]) -> None:
        """HIP's enumeration: ``smi_indices[h]`` is the amd-smi index of HIP device ``h``."""
        for hip_id, smi_index in enumerate(smi_indices):
            self.dies[smi_index].hip_id = hip_id
            self.dies[smi_index].node_id = 2 + hip_id  # KFD nodes 0 and 1 are the CPU sockets

    def _renumber(self) -> None:
        for n, die in enumerate(self.dies):
            die.hip_id, die.node_id, die.bdf = n, 2 + n, f"0000:{0x0c + 0x10 * n:02x}:00.0"

    # -- library ------------------------------------------------------------------------------

    def amdsmi_init(self, flag=AmdSmiInitFlags.INIT_AMD_GPUS):
        self.calls["amdsmi_init"] += 1
        if not isinstance(flag, AmdSmiInitFlags):  # as the binding: a plain int is refused
            raise AmdSmiParameterException(flag, AmdSmiInitFlags)
        if self.init_error is not None:
            raise AmdSmiLibraryException(self.init_error)
        self.init_count += 1

    def amdsmi_shut_down(self):
        self.calls["amdsmi_shut_down"] += 1
        if self.init_count == 0:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)
        self.init_count -= 1

    def amdsmi_get_processor_handles(self):
        self._check_init()
        return [die.handle for die in self.dies]

    # -- identity -----------------------------------------------------------------------------

    def amdsmi_get_gpu_device_uuid(self, processor_handle):
        return self._die(processor_handle, "amdsmi_get_gpu_device_uuid").uuid

    def amdsmi_get_gpu_device_bdf(self, processor_handle):
        return self._die(processor_handle, "amdsmi_get_gpu_device_bdf").bdf

    def amdsmi_get_gpu_asic_info(self, processor_handle):
        die = self._die(processor_handle, "amdsmi_get_gpu_asic_info")
        return {
            "market_name": die.board.model,
            "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
            "subvendor_id": "0x1002",
            "device_id": "0x740c" if len(die.board.dies) == 2 else "0x74a1",
            "rev_id": "0x01",
            "asic_serial": "0x{:016X}".format(die.unique_id),
            "oam_id": self.boards.index(die.board),
            "num_compute_units": 110 if len(die.board.dies) == 2 else 304,
            "target_graphics_version": "gfx90a" if len(die.board.dies) == 2 else "gfx942",
            "subsystem_id": "0x0c34",
        }

    def amdsmi_get_gpu_enumeration_info(self, processor_handle):
        die = self._die(processor_handle, "amdsmi_get_gpu_enumeration_info")
        return {"drm_render": 128 + die.hip_id, "drm_card": die.hip_id, "hsa_id": die.node_id, "hip_id": die.hip_id, "hip_uuid": die.rocr_uuid}

    def amdsmi_get_gpu_kfd_info(self, processor_handle):
        die = self._die(processor_handle, "amdsmi_get_gpu_kfd_info")
        return {"kfd_id": 1000 + die.unique_id, "node_id": die.node_id, "current_partition_id": 0}

    # -- energy and power -------------------------------------------------------------------------

    def amdsmi_get_energy_count(self, processor_handle):
        die = self._die(processor_handle, "amdsmi_get_energy_count")
        if not die.board.counter_supported:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_SUPPORTED)
        counts = die.board.counts() if die.position == 0 else 0  # the second die reports nothing
        # 'power' until 6.3.0, both keys in 6.3.x, 'energy_accumulator' alone from 6.4.0 (the bindings on PyPI).
        keys = ["power"] * (not self._at_least("6.4.0")) + ["energy_accumulator"] * self._at_least("6.3.0")
        timestamp_ns = int(self.clock() * 1e9)
        return {**dict.fromkeys(keys, counts), "counter_resolution": RESOLUTION_UJ, "timestamp": timestamp_ns}

    def amdsmi_get_power_info(self, processor_handle):
        die = self._die(processor_handle, "amdsmi_get_power_info")
        board, now = die.board, self.clock()
        instant = int(round(board.power_at(now)))
        average = int(round(board.energy_between_j(now - 1.0, now)))  # a 1-second average, as NVML's
        if len(board.dies) == 2:  # MI250X: average only, and only on the first die
            current, averaged = NA, average if die.position == 0 else 0
        else:  # MI300X: instantaneous only
            current, averaged = instant, NA
        info = {
            "socket_power": current if current != NA else averaged,
            "current_socket_power": current,
            "average_socket_power": averaged,
            "gfx_voltage": 806,
            "soc_voltage": 731,
            "mem_voltage": 1250,
            "power_limit": board.power_limit_w,
        }
        if not self._at_least("7.0.0"):
            del info["socket_power"]  # added in amdsmi 7
        if not self._at_least("6.1.1"):
            # amdsmi 6.1.0 hands over the library's 0xFFFF ("no value") as it is; 6.1.1 made it "N/A".
            info = {key: 0xFFFF if value == NA else value for key, value in info.items()}
        return info

    # -- helpers ------------------------------------------------------------------------------

    def _at_least(self, version: str) -> bool:
        return tuple(int(p) for p in self.version.split(".")[:3]) >= tuple(int(p) for p in version.split("."))

    def _check_init(self) -> None:
        if self.init_count == 0:
            raise AmdSmiLibraryException(AMDSMI_STATUS_NOT_INIT)

    def _die(self, processor_handle, call: str) -> FakeDie:
        self.calls[call] += 1
        if not isinstance(processor_handle, FakeProcessorHandle):
            raise AmdSmiParameterException(processor_handle, "amdsmi_processor_handle")
        self._check_init()
        die = processor_handle._die
        if die.board.error_code is not None:
            _check_res(die.board.error_code)
        return die
