"""Ctrl-C at the worst moment inside the library's own bookkeeping: each step happens whole, once.

A real SIGINT is sent to this process (``os.kill``) at the point where it did harm, from inside
the library's own calls (a wrapped system call or method), as a notebook's interrupt would land
there by chance. Python runs its handler at the next bytecode: before ``interrupts.held``, that
was in the middle of the step; now the ``KeyboardInterrupt`` comes at the step's end.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from greencallbacks import interrupts
from greencallbacks import records as records_module
from greencallbacks.records import RecordWriter, read_records
from greencallbacks.sensors.base import Kind
from greencallbacks.session import EnergySession
from greencallbacks.tracker import SUMMARY_FILE
from tests.fakes.scripted import ScriptedSensor


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_held_delivers_a_ctrl_c_at_the_end_of_the_block_and_nests():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            ctrl_c()
            steps.append("after the signal")
            with interrupts.held():  # inside another hold: delivered once, at the outer end
                steps.append("nested")
            steps.append("end of block")
    assert steps == ["after the signal", "nested", "end of block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_held_calls_a_handler_of_the_users_own_and_leaves_other_threads_and_ignored_sigint_alone():
    called = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: called.append(signum))
    try:
        with interrupts.held():
            ctrl_c()
            assert not called
            ctrl_c()  # pressed twice ("once to stop gracefully, twice to force"): both delivered
        assert called == [signal.SIGINT, signal.SIGINT]
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with interrupts.held():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(interrupts.held().__enter__() is None))
    worker.start()
    worker.join()
    assert seen == [True]


def record(seq: int):
    from tests.test_report import rec

    return rec("run", "train", seq, 3600.0, 32, seq)


def test_a_ctrl_c_right_after_the_lines_reach_the_file_does_not_write_them_twice(tmp_path, monkeypatch):
    """The lines were written, then the interrupt came before they were taken off `pending`: the
    write-up that followed (the run's abort) wrote them again."""
    writer = RecordWriter(tmp_path / "energy-records.jsonl")
    real_write = os.write

    def write_then_interrupted(fd, data):
        written = real_write(fd, data)
        ctrl_c()
        return written

    monkeypatch.setattr(records_module.os, "write", write_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.write(record(0))
    monkeypatch.setattr(records_module.os, "write", real_write)
    writer.write(record(1))
    writer.close()
    assert [r.seq for r in read_records(tmp_path)] == [0, 1]


def session_on(tmp_path) -> EnergySession:
    sensors = [ScriptedSensor("gpu0", time.monotonic, power_w=100.0), ScriptedSensor("cpu", time.monotonic, kind=Kind.CPU)]
    sensors[1].poll_interval_s = 0.05  # a sensor the meter's thread polls: that thread must stop
    session = EnergySession(sensors=sensors, intensity=100.0, output_dir=tmp_path)
    session.start()
    return session


def meter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "greencallbacks-meter" and t.is_alive()]


def assert_summary_is_the_records(tmp_path):
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    records = read_records(tmp_path)
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert len({r.seq for r in records}) == len(records)  # none twice
    return records


def test_a_ctrl_c_between_counting_a_record_and_writing_it_loses_nothing(tmp_path, monkeypatch):
    """The train record and the gap before it were counted in the ledger, then the interrupt came
    before the write: the file lost both, the summary held one."""
    session = session_on(tmp_path)
    tracker = session.tracker
    tracker.begin("train", 0)
    tracker.add_samples(32)
    real_write = tracker._writer.write

    def interrupted_first(*records):
        ctrl_c()
        return real_write(*records)

    monkeypatch.setattr(tracker._writer, "write", interrupted_first)
    with pytest.raises(KeyboardInterrupt):
        tracker.end("train")
    monkeypatch.setattr(tracker._writer, "write", real_write)
    session.stop(failed=True)
    records = assert_summary_is_the_records(tmp_path)
    assert [(r.phase, r.epoch, r.samples, r.partial) for r in records if r.phase == "train"] == [("train", 0, 32, False)]


def test_a_ctrl_c_inside_a_runs_stop_still_stops_its_meter_and_writes_its_summary(tmp_path, monkeypatch):
    session = session_on(tmp_path)
    session.tracker.begin("train", 0)
    session.tracker.end("train")
    assert meter_threads()
    meter = session.tracker.meter
    real_stop = meter.stop_sampling

    def interrupted_stop():
        ctrl_c()
        return real_stop()

    monkeypatch.setattr(meter, "stop_sampling", interrupted_stop)
    with pytest.raises(KeyboardInterrupt):
        session.stop()
    assert not meter_threads()
    assert_summary_is_the_records(tmp_path)
