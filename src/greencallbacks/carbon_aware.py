"""Carbon-aware training: pause between epochs while the grid is dirtier than a threshold.

This is the online form of the "Pause and Resume" strategy of "Measuring the Carbon Intensity of
AI in Cloud Instances" (FAccT 2022): training waits while the intensity is above a threshold, and
a delay budget bounds how much later the run may finish. The adapters call :meth:`maybe_pause`
between epochs (never inside one: a pause mid-step would hold GPU memory and gain nothing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from greencallbacks.carbon.intensity import MAX_INTENSITY_G_PER_KWH
from greencallbacks.checks import as_float, keywords_checked, shown
from greencallbacks.meter import since_boot, unix_now

if TYPE_CHECKING:
    from greencallbacks.carbon import Carbon


@dataclass(frozen=True)
class Pause:
    """One pause: start and end (unix seconds: the wall clock as it began, advanced by the steady
    clock the wait was timed by, so never before the start) and the intensity that caused it."""

    start_unix: float
    end_unix: float
    intensity_g_per_kwh: float
    intensity_source: str

    @property
    def duration_s(self) -> float:
        return self.end_unix - self.start_unix


@keywords_checked
class CarbonAwarePause:
    """Wait while ``carbon``'s intensity now is above ``threshold_g_per_kwh``, within a delay budget.

    Args:
        threshold_g_per_kwh: pause while the intensity is above this (gCO2eq/kWh, > 0).
        max_delay_s: the most the whole run may be delayed by pauses, summed (>= 0; 0 disables).
        check_every_s: how long to sleep before looking at the intensity again.
        sleep, clock: injectable for tests (default ``time.sleep`` and ``meter.unix_now``, the
            records' clock). ``clock`` gives the wall time (unix seconds), read once as each pause
            begins.
        steady_clock: what the waits are timed by, and the wall time advanced by within a pause.
            Default: ``clock`` itself where it is injected (a test's fake clock, which its
            ``sleep`` advances), else a clock that never steps (see ``meter.since_boot``).
    """

    def __init__(
        self,
        threshold_g_per_kwh: float,
        max_delay_s: float,
        check_every_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = unix_now,
        steady_clock: Callable[[], float] | None = None,
    ) -> None:
        # Capped as every intensity is: a threshold no grid reaches would never pause (a unit mistake).
        self.threshold_g_per_kwh = _number("threshold_g_per_kwh", threshold_g_per_kwh,
                                           lambda v: 0 < v <= MAX_INTENSITY_G_PER_KWH,
                                           f"> 0 and at most {MAX_INTENSITY_G_PER_KWH:g} gCO2eq/kWh")
        self.max_delay_s = _number("max_delay_s", max_delay_s, lambda v: v >= 0, ">= 0")
        self.check_every_s = _number("check_every_s", check_every_s, lambda v: v > 0, "> 0")
        for argument, function in (("sleep", sleep), ("clock", clock), ("steady_clock", steady_clock)):
            if not callable(function) and not (argument == "steady_clock" and function is None):
                raise ValueError(f"{argument} must be a function, got {function!r}")
        self._sleep = sleep
        self._clock = clock
        # Timed by the wall clock, a step of it during a pause (NTP, a suspend's resync) was taken
        # for the wait: 30 s forward in a 0.2 s pause spent 30 s of the delay budget, and a step
        # back ended the pause at once with a negative duration. CLOCK_BOOTTIME (where there is
        # one) also counts a suspend in the pause, which delayed the run as much. The wall time is
        # the records' (unix_now): on time.time, a step of the system clock since the meter was
        # built had a pause decided by the intensity of another hour than its gap was priced at.
        self._given_steady_clock = steady_clock
        if steady_clock is None:
            steady_clock = since_boot if clock is unix_now else clock
        self._steady = steady_clock
        self.total_paused_s = 0.0
        self.pauses: list[Pause] = []

    def for_a_new_run(self) -> "CarbonAwarePause":
        """The same settings with nothing paused yet: each run has its own delay budget (a second
        fit with one callback is a new run; a resume restores the spent part from its state)."""
        return CarbonAwarePause(self.threshold_g_per_kwh, self.max_delay_s, self.check_every_s,
                                sleep=self._sleep, clock=self._clock, steady_clock=self._given_steady_clock)

    @property
    def remaining_delay_s(self) -> float:
        return max(0.0, self.max_delay_s - self.total_paused_s)

    def maybe_pause(self, carbon: "Carbon", agree: Callable[[bool], bool] | None = None) -> float:
        """Sleep while the intensity is above the threshold and budget remains; the seconds paused.

        ``agree``: given this process's "pause on?", the one every rank follows (rank 0's), asked
        before each sleep: ranks that decided apart (a live source fallen back on one of them, a
        check either side of a step in the series) would have one pause while the others wait
        for it in their next collective.
        """
        started, steady_start = self._clock(), self._steady()

        def wall_at(steady: float) -> float:
            return started + max(0.0, steady - steady_start)

        paused_here = 0.0
        reason = None
        stuck = False  # a clock that does not move would loop forever
        while True:
            before = self._steady()
            now = wall_at(before)
            intensity = carbon.intensity_between(now, now)
            await_answer = getattr(carbon, "await_live_answer", None)
            if intensity.g_per_kwh > self.threshold_g_per_kwh and callable(await_answer) and await_answer(now):
                # A live answer slower than a boundary waits for: the static fallback would decide a
                # pause of up to check_every_s; its answer is due within the source's timeout.
                intensity = carbon.intensity_between(now, now)
            go = not stuck and self.remaining_delay_s > 0 and intensity.g_per_kwh > self.threshold_g_per_kwh
            if agree is not None:
                go = agree(go)
            if not go:
                break
            reason = reason or intensity
            step = min(self.check_every_s, self.remaining_delay_s)
            interrupted = True
            try:
                self._sleep(step)
                interrupted = False
            finally:
                # The clock, not the requested step, says how long we really waited, also when an
                # exception raised into the sleep (Ctrl-C, a signal handler's) ends the pause.
                after = self._steady()
                waited = max(0.0, after - before)
                paused_here += waited
                self.total_paused_s += waited
                if interrupted and paused_here > 0:
                    self.pauses.append(Pause(started, wall_at(after), reason.g_per_kwh, reason.source))
            stuck = waited == 0.0
        if paused_here > 0 and reason is not None:
            self.pauses.append(Pause(started, wall_at(self._steady()), reason.g_per_kwh, reason.source))
        return paused_here

    def state_dict(self) -> dict:
        """So the delay budget survives checkpoint and resume."""
        return {"total_paused_s": self.total_paused_s}

    def load_state_dict(self, state: dict) -> None:
        self.total_paused_s = float(state.get("total_paused_s", 0.0))


def _number(argument: str, value: object, valid: Callable[[float], bool], rule: str) -> float:
    number = as_float(value)
    if not (math.isfinite(number) and valid(number)):
        raise ValueError(f"{argument} must be a finite number {rule}, got {shown(value)}")
    return number
