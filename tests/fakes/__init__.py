"""Faithful fakes of hardware this machine lacks (NVML, RAPL) and scripted sensors.

- ``scripted``: ``FakeClock`` and ``ScriptedSensor`` (a sensor whose power the test sets).
- ``fake_pynvml``: ``FakeNvml``, a stand-in for the ``pynvml`` module with simulated GPUs.
- ``fake_powercap``: ``FakePowercap``, a ``/sys/class/powercap`` tree under a temporary folder.
"""

from tests.fakes.scripted import FakeClock

__all__ = ["FakeClock"]
