"""A Tracker made in one process and started in processes forked from it, one after another: what
Lightning's ``ddp_notebook`` / ``ddp_fork`` do with the callback of a notebook's Trainer at every
``fit`` (the notebook's process never measures; each fit forks its ranks from it)."""

from __future__ import annotations

import os

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork: POSIX only")


def measure_in_a_fork(tracker: Tracker) -> None:
    """Start ``tracker`` in a forked child, measure one epoch, finish; the child leaves at once
    (``os._exit``: none of pytest's exit)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            clock = FakeClock()
            tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                                wall_clock=lambda: clock() + 1.7e9))
            tracker.begin("train", 0)
            clock.advance(10.0)
            tracker.add_samples(100)
            tracker.end("train")
            tracker.finish()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_each_fit_forked_from_a_notebook_is_a_run_of_its_own(tmp_path):
    """The id drawn in the notebook's process was every fork's: the second fit there continued the
    first's run id with its records numbered from 0 again (two records of seq 0 in one run, a
    summary of the second fit alone against records of both), and so did a validate after it."""
    tracker = Tracker(carbon=Carbon(intensity=300.0), output_dir=tmp_path)
    for _ in range(3):
        measure_in_a_fork(tracker)
    records = read_records(tmp_path)
    runs = list(dict.fromkeys(r.run_id for r in records))
    assert len(runs) == 3, [(r.run_id, r.seq, r.phase) for r in records]
    for run_id in runs:
        seqs = [r.seq for r in records if r.run_id == run_id]
        assert len(seqs) == len(set(seqs)), (run_id, seqs)


def test_a_run_id_given_is_kept_in_a_fork_and_a_second_one_renamed(tmp_path):
    """A run_id given names the fork's run as anywhere (a second run under it becomes <id>-2)."""
    tracker = Tracker(carbon=Carbon(intensity=300.0), output_dir=tmp_path, run_id="exp")
    for _ in range(2):
        measure_in_a_fork(tracker)
    assert list(dict.fromkeys(r.run_id for r in read_records(tmp_path))) == ["exp", "exp-2"]
