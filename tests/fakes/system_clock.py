"""The system's clocks, faked, for a step of the wall clock (NTP, ``date -s``) within one process."""

from __future__ import annotations

import inspect
import sys
import time

import greencallbacks.carbon_aware as carbon_aware
import greencallbacks.clock as clock_module
import greencallbacks.meter as meter_module
from tests.fakes.scripted import FakeClock


class SystemClock:
    """``time.time`` (the wall clock, which ``step`` moves) and ``since_boot`` (the clock that never
    steps, which ``advance`` moves). A real step reaches every reader of the wall clock, so every
    greencallbacks default argument that captured ``time.time`` at import reads the fake too. The
    process's wall-clock anchor is forgotten: its first reading is of the fake."""

    def __init__(self, monkeypatch, unix_s: float = 1.7e9) -> None:
        self.steady = FakeClock(100.0)
        self._offset = unix_s - self.steady()
        real_time = time.time
        monkeypatch.setattr(time, "time", self.wall)
        for module in (clock_module, meter_module, carbon_aware):
            monkeypatch.setattr(module, "since_boot", self.steady)
        monkeypatch.setattr(clock_module, "_anchor", None)
        for function in _greencallbacks_functions():
            if function.__defaults__ and any(d is real_time for d in function.__defaults__):
                defaults = tuple(self.wall if d is real_time else d for d in function.__defaults__)
                monkeypatch.setattr(function, "__defaults__", defaults)
            for name, default in (function.__kwdefaults__ or {}).items():
                if default is real_time:
                    monkeypatch.setitem(function.__kwdefaults__, name, self.wall)

    def wall(self) -> float:
        return self.steady() + self._offset

    def step(self, seconds: float) -> None:
        self._offset += seconds

    def advance(self, seconds: float) -> None:
        self.steady.advance(seconds)


def _greencallbacks_functions():
    seen = set()
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "greencallbacks":
            continue
        for value in list(vars(module).values()):
            members = vars(value).values() if inspect.isclass(value) else (value,)
            for function in members:
                if inspect.isfunction(function) and id(function) not in seen:
                    seen.add(id(function))
                    yield function
