"""Ctrl-C at every line of the tracker's own bookkeeping: the ledger stays exact.

A real SIGINT (``os.kill``) is sent from a trace function at the N-th line the tracker runs (in
its module and in those it keeps apart: ``TRACKER_FILES``), for
every N of a small training loop (nested validation, two epochs, a finish), as a notebook's
Ctrl-C lands there by chance. The loop then goes on as a framework does after a
``KeyboardInterrupt``: the run is aborted. On a fake clock and a constant-power sensor every
record is exact, so after each interrupt: the records' durations add up to the time the run was
measured (no interval lost or billed twice), each record's energy is its power times its
duration, no seq twice, the summary is the records; and the next run in that directory, on the
same meter, measures exactly. Before phases were changed whole, a Ctrl-C right after the last
phase was popped and before it was closed lost that phase; after an interval was billed and
before the snapshot moved on, the abort billed it again.

``GC_INTERRUPT_SEEDS=N`` also draws N random interrupt points in the hooks of a real Lightning fit
(skipped without Lightning), each followed by a normal fit with the same callback.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from greencallbacks import (checkpoint_state, checks, concurrency, embodied_run, forks, heartbeat, logged_values,
                            open_phase, phase_boundaries, phase_lock, phase_records, resume, run_end, run_ids,
                            shared_gpus, summaries)
from greencallbacks import tracker as tracker_module
from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.records import RECORDS_FILE, read_records
from greencallbacks.tracker import SUMMARY_FILE, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

POWER_W = 100.0
# The tracker's module and the modules of its parts (split from it: one idea each).
TRACKER_FILES = frozenset(module.__file__ for module in (
    tracker_module, phase_lock, phase_boundaries, phase_records, run_end, logged_values, checkpoint_state, open_phase,
    concurrency, forks, run_ids, resume, shared_gpus, embodied_run, summaries, checks, heartbeat))


class CtrlCAtLine:
    """A trace function that sends SIGINT to this process at the ``nth`` line run in ``filenames``
    (``nth`` < 0: only counts)."""

    def __init__(self, nth: int, filenames: frozenset[str] = TRACKER_FILES) -> None:
        self.nth, self.filenames, self.lines, self.where = nth, filenames, 0, None

    def __enter__(self) -> "CtrlCAtLine":
        sys.settrace(self.calls)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)

    def calls(self, frame, event, arg):
        return self.line if frame.f_code.co_filename in self.filenames else None

    def line(self, frame, event, arg):
        if event == "line":
            self.lines += 1
            if self.lines == self.nth:
                self.where = f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}:{frame.f_lineno}"
                os.kill(os.getpid(), signal.SIGINT)
        return self.line


def training(tracker: Tracker, clock: FakeClock, meter: Meter, output_dir: Path) -> None:
    tracker.start(meter, output_dir=output_dir)
    for epoch in range(2):
        clock.advance(1.0)
        tracker.begin("train", epoch)
        clock.advance(10.0)
        tracker.add_samples(4)
        tracker.begin("validation", epoch)
        clock.advance(2.0)
        tracker.add_samples(2)
        tracker.end("validation")
        clock.advance(1.0)
        tracker.end("train")
    clock.advance(0.5)
    tracker.finish()


def check_exact(output_dir: Path, run_id: str, measured_s: float, context: str) -> None:
    records = [r for r in read_records(output_dir) if r.run_id == run_id] if (output_dir / RECORDS_FILE).exists() else []
    assert sum(r.duration_s for r in records) == pytest.approx(measured_s, abs=1e-9), context
    for r in records:
        assert r.it_energy_kwh * 3.6e6 == pytest.approx(POWER_W * r.duration_s, abs=1e-9), (repr(r), context)
    assert len({r.seq for r in records}) == len(records), "a seq written twice " + context
    if not records and not (output_dir / SUMMARY_FILE).exists():
        return  # interrupted at once: nothing measured, nothing written
    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    assert summary["run_id"] == run_id, context
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12, abs=1e-15), context
    for phase, totals in summary["phases"].items():
        assert totals["count"] == sum(r.phase == phase for r in records), context


def interrupted_training(output_dir: Path, nth: int) -> CtrlCAtLine:
    """The loop with a Ctrl-C at the tracker's ``nth`` line, aborted as a framework does; then a
    normal run in the same directory on the same meter. Both checked exact."""
    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    tracker = Tracker(carbon=Carbon(intensity=300.0, pue=1.0), framework="test")
    started = clock()
    ctrl_c = CtrlCAtLine(nth)
    try:
        with ctrl_c:
            training(tracker, clock, meter, output_dir)
    except KeyboardInterrupt:
        # An interrupted `with lock:` can leave the lock acquired: the abort, and every later run, hung.
        assert not concurrency._running_lock.locked(), f"Ctrl-C at the tracker's line {nth} ({ctrl_c.where})"
        tracker.abort()  # what each adapter does with a failing call (Lightning's on_exception, ...)
    assert not tracker.running
    context = f"Ctrl-C at the tracker's line {nth} ({ctrl_c.where})"
    check_exact(output_dir, tracker.run_id, clock() - started, context)
    after = Tracker(carbon=Carbon(intensity=300.0, pue=1.0), framework="test")
    started = clock()
    training(after, clock, meter, output_dir)
    check_exact(output_dir, after.run_id, clock() - started, context + ", the next run")
    return ctrl_c


def test_a_ctrl_c_at_any_line_of_the_tracker_keeps_the_ledger_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # ~3000 runs: what is on disk is read back, not crashed
    lines = interrupted_training(tmp_path / "counted", -1).lines
    assert lines > 1000
    for nth in range(1, lines + 1):
        assert interrupted_training(tmp_path / str(nth), nth).where is not None


SEEDS = range(int(os.environ.get("GC_INTERRUPT_SEEDS", "0")))
GREENCALLBACKS_SRC = str(Path(tracker_module.__file__).parent) + os.sep


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_a_ctrl_c_anywhere_in_the_lightning_hooks_keeps_the_ledger(tmp_path, seed):
    pytest.importorskip("lightning.pytorch")
    from flow_invariants import check_run, meter_threads
    from lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0)

    def fit(step: int, ctrl_c: CtrlCAtLine | None = None) -> Path:
        logger = L.loggers.CSVLogger(tmp_path / "logs", name="fuzz")
        trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback],
                            **trainer_kwargs(val_check_interval=0.5))
        try:
            if ctrl_c is not None:
                threading.settrace(None)
                sys.settrace(ctrl_c.any_file)
            trainer.fit(TinyModel(), *loaders())
        except (KeyboardInterrupt, SystemExit):  # Lightning turns a Ctrl-C into sys.exit(1)
            pass
        finally:
            sys.settrace(None)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning leaves it ignored
        return Path(logger.log_dir)

    class AnyOfOurs(CtrlCAtLine):
        def any_file(self, frame, event, arg):
            return self.line if frame.f_code.co_filename.startswith(GREENCALLBACKS_SRC) else None

    probe = AnyOfOurs(-1)
    dirs = [fit(0, probe)]
    ctrl_c = AnyOfOurs(random.Random(seed).randint(1, probe.lines))
    dirs.append(fit(1, ctrl_c))
    context = f"seed {seed}: Ctrl-C at line {ctrl_c.nth} of {probe.lines} ({ctrl_c.where})"
    assert not meter_threads(), context
    if callback.tracker._writer is not None:
        check_run(callback.tracker.run_id, dirs, power_w=50.0, context=context)
    dirs.append(fit(2))
    assert not meter_threads(), context
    check_run(callback.tracker.run_id, dirs, power_w=50.0, context=context + ", the next fit")


@pytest.mark.parametrize("call", ["train", "evaluate"])
def test_a_ctrl_c_between_the_hf_runs_start_and_its_watch_still_writes_the_run_up(tmp_path, monkeypatch, call):
    """HF has no exception hook: a watch on train() (or a standalone evaluate()) writes a failed
    call up. A Ctrl-C after the run started and before the watch was set left the run open, its
    meter running and no summary, until the next call or the process's exit."""
    pytest.importorskip("transformers")
    from transformers import Trainer

    from flow_invariants import check_run, meter_threads
    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args

    callback = EnergyCallback(sensors=[scripted_sensor()], intensity=300.0)
    real_start = callback._start

    def started_then_ctrl_c(args):
        real_start(args)
        os.kill(os.getpid(), signal.SIGINT)

    def trainer(out: Path) -> Trainer:
        return Trainer(model=tiny_model(), args=training_args(out, num_train_epochs=1),
                       train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                       callbacks=[callback])

    monkeypatch.setattr(callback, "_start", started_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        getattr(trainer(tmp_path / "interrupted"), call)()
    monkeypatch.setattr(callback, "_start", real_start)
    assert not meter_threads() and not callback.session.running
    check_run(callback.tracker.run_id, [tmp_path / "interrupted"], power_w=50.0)
    trainer(tmp_path / "next").train()
    assert not callback.session.running
    check_run(callback.tracker.run_id, [tmp_path / "interrupted", tmp_path / "next"], power_w=50.0)
