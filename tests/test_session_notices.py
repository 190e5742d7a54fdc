"""The two set-up notices (estimated sensors, world-average intensity) are said once per process."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

from greencallbacks import session as session_module
from greencallbacks.sensors.base import Kind, Method
from greencallbacks.session import EnergySession
from tests.fakes.scripted import FakeClock, ScriptedSensor


def test_each_notice_is_said_once_per_process_not_on_every_fit(monkeypatch):
    monkeypatch.setattr(session_module, "_SAID", set())  # as in a fresh process
    clock = FakeClock()
    meter = SimpleNamespace(sensors=[ScriptedSensor("cpu", clock, kind=Kind.CPU, method=Method.ESTIMATED)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # fit, evaluate, predict in a notebook: three sessions
            EnergySession()._tell_once(meter)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "cpu energy is estimated, not measured" in messages[0] and "world average" in messages[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EnergySession(country="FR")._tell_once(SimpleNamespace(sensors=[]))  # nothing new to say
        EnergySession()._tell_once(SimpleNamespace(sensors=[ScriptedSensor("ram", clock, kind=Kind.RAM, method=Method.ESTIMATED)]))
    assert [str(w.message).split(" energy")[0] for w in caught] == ["greencallbacks: ram"]  # a new message is said
