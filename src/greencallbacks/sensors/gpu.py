"""What the NVIDIA and AMD GPU sensors share: one class per backend, one copy of the plumbing.

Both hold a vendor library handle behind a lock, read either a hardware energy counter or
sampled power integrated by the meter's background thread, turn the binding's own exception
into ``SensorError`` naming the GPU, and balance one library init with one shutdown on close.
A backend supplies only its binding's calls, its error class and its counter arithmetic.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from greencallbacks.sensors.base import Integrator, Kind, Method, Sensor, SensorError

# No GPU board draws this: a counter step implying more is a misread (sensors.base.Counter), and a
# power limit reported above it is in some other unit.
MAX_GPU_POWER_W = 5000.0


class GpuSensor(Sensor):
    """Base of ``NvmlGpuSensor`` and ``AmdGpuSensor``.

    A subclass sets ``library`` (the name in error messages) and ``no_power`` (what ``power_w``
    says when the GPU reports no power), implements ``_binding_error`` (the class of the
    binding's exceptions), ``_is_unsupported``, ``_shut_down`` and ``_counter_j``, and in its
    ``__init__`` sets ``_read_power_w`` (a callable returning watts, or None) and either the
    counter's state or ``_use_sampled_power``.
    """

    kind = Kind.GPU
    library = "GPU library"
    no_power = "reports no power reading for this GPU"
    # Whether the background thread reads the counter in ``poll`` (an accumulator that can wrap).
    poll_reads_counter = False
    sample_interval_s = 0.05  # power polled every 50 ms where it is integrated (set by the constructor)

    @property
    def source(self) -> str:  # type: ignore[override]
        if self.method == Method.SAMPLED:
            return f"integrated {self.library} power samples"
        return f"{self.library} energy counters"

    def __init__(
        self, handle: Any, *, index: int, clock: Callable[[], float], shutdown_on_close: bool
    ) -> None:
        self._handle = handle
        self._clock = clock
        self._lock = threading.Lock()
        self._shutdown_on_close = shutdown_on_close
        self._closed = False
        self._integrator: Integrator | None = None
        self._read_power_w: Callable[[], float] | None = None
        self.index = index
        self.name = f"gpu{index}"

    # -- what a backend supplies ------------------------------------------------------------

    def _binding_error(self) -> type[BaseException]:
        raise NotImplementedError

    def _is_unsupported(self, error: BaseException) -> bool:
        """The GPU or driver cannot do that, as opposed to a failure."""
        raise NotImplementedError

    def _shut_down(self) -> None:
        raise NotImplementedError

    def _counter_j(self) -> float:
        """Cumulative joules from the energy counter (caller holds the lock)."""
        raise NotImplementedError

    def _error_text(self, error: BaseException) -> str:
        return str(error)

    # -- the Sensor interface -------------------------------------------------------------

    def energy_j(self) -> float:
        if self._integrator is not None:
            return self._sample()
        with self._lock:
            return self._counter_j()

    def poll(self) -> float | None:
        if self._integrator is not None:
            return self._sample()
        if self.poll_reads_counter:
            with self._lock:
                return self._counter_j()
        return None

    def power_w(self) -> float:
        """Power in watts: instantaneous where the GPU reports it, else its averaged power."""
        if self._read_power_w is None:
            raise SensorError(f"{self.name}: {self.library} {self.no_power}")
        return self._read_power_w()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._shutdown_on_close:
            try:
                self._shut_down()
            except Exception:  # noqa: BLE001 - closing must never raise
                pass

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model}

    # -- shared internals -------------------------------------------------------------------

    def _identify(self, read: Callable[[], tuple[str, str]]) -> None:
        """Set ``scope`` (the GPU's UUID) and ``model`` from ``read``."""
        try:
            self.scope, self.model = read()
        except self._binding_error() as error:
            raise SensorError(
                f"{self.name}: {self.library} could not identify the GPU: {self._error_text(error)}"
            ) from error

    def _failed(self, what: str, error: BaseException) -> SensorError:
        return SensorError(f"{self.name} ({self.scope}): {self.library} {what} failed: {self._error_text(error)}",
                           transient=self._is_transient(error), unsupported=self._is_unsupported(error))

    def _is_transient(self, error: BaseException) -> bool:
        """Is ``error`` a fault the device recovers from (retried before degrading)? A backend says."""
        return False

    def _call(self, what: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except self._binding_error() as error:
            raise self._failed(what, error) from error

    def _if_supported(self, what: str, read: Callable[[], Any]) -> Any:
        """``read()``, or None where the GPU or driver does not support it."""
        try:
            return read()
        except self._binding_error() as error:
            if self._is_unsupported(error):
                return None
            raise self._failed(what, error) from error

    def sampled_copy(self) -> "GpuSensor | None":
        """This GPU read on by integrating its power: the meter's replacement where its energy
        counter fails for good (NOT_SUPPORTED or an unknown error after a driver update) while
        its power reads still work. None where it is sampled already or reports no power; raises
        ``SensorError`` where the power read fails too (a GPU lost): nothing can measure it then."""
        if self._integrator is not None or self._read_power_w is None:
            return None
        replacement = copy.copy(self)
        replacement.off_thread = False
        replacement.update_period_s = self._power_window_s()
        replacement._use_sampled_power(self.sample_interval_s)
        self._shutdown_on_close = False  # the library stays open for the replacement, which closes it
        return replacement

    def _power_window_s(self) -> float:
        """The window the power reading averages over (a backend's averaged reading); 0 if instantaneous."""
        return 0.0

    def _use_sampled_power(self, interval_s: float) -> None:
        """Integrate power polled every ``interval_s``; the first sample starts the integral."""
        self.method = Method.SAMPLED
        self.poll_interval_s = interval_s
        self.samples_when_read = True
        self._integrator = Integrator(self._clock)
        self._sample()

    def _sample(self) -> float:
        assert self._integrator is not None and self._read_power_w is not None
        with self._lock:
            return self._integrator.add(self._read_power_w())
