"""The heartbeat: a process killed without any handler running (SIGKILL, the OOM killer, a
preemption) loses at most ``HEARTBEAT_S`` of its last phase, not everything since its checkpoint.

While running, the tracker writes its open phases beside the records (at the framework's logging
steps, ``Tracker.live``); a resume carries them as records, in place of the checkpoint's older
measure of the same phases, each once, and the run's totals stay the sum of its records.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import greencallbacks.checkpoint_state as checkpoint_state  # where the tracker reads HEARTBEAT_S
from greencallbacks import heartbeat
from greencallbacks.carbon import Carbon
from greencallbacks.ledger import read_run_records
from greencallbacks.meter import Meter
from greencallbacks.records import TEMPORARY_NAME_BYTES
from greencallbacks.tracker import HEARTBEAT_S, SUMMARY_FILE, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.killed import killed_after_line

REPO = Path(__file__).resolve().parents[1]
POWER_W = 100.0
RUN = "beating"


def started(directory: Path, state: dict | None = None, start: float = 1000.0) -> tuple[Tracker, FakeClock]:
    clock = FakeClock(start)
    # A resumed attempt draws an id of its own until the checkpoint names the run.
    tracker = Tracker(output_dir=directory, run_id=RUN if state is None else None, carbon=Carbon(intensity=200.0))
    if state is not None:
        tracker.load_state_dict(state)
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))
    return tracker, clock


def the_heartbeat(directory: Path, run: str = RUN, rank: int = 0) -> Path:
    """Rank ``rank``'s heartbeat of ``run`` (its name holds its session's id), or, where there is
    none, a path that does not exist."""
    found = [path for path, its_rank in heartbeat.heartbeat_files(run, [directory]) if its_rank == rank]
    assert len(found) <= 1, found
    return found[0] if found else directory / "no-heartbeat.json"


def killed(tracker: Tracker) -> None:
    """The process dies: no handler runs, nothing is written; the kernel frees the run's claim."""
    tracker._hold_lock(None, "")


def steps(tracker: Tracker, clock: FakeClock, seconds: float, every: float = 5.0) -> None:
    """Training steps, each logging its live values (the framework's logging step)."""
    for _ in range(round(seconds / every)):
        clock.advance(every)
        tracker.add_samples(8)
        tracker.live()


def totals_match_records(directory: Path) -> list:
    records = read_run_records(RUN, [directory])
    summary = json.loads((directory / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert summary["co2eq_g"] == pytest.approx(sum(r.co2eq_g for r in records), rel=1e-9)
    keys = [(r.seq, r.attempt) for r in records]
    assert len(keys) == len(set(keys))  # every phase once
    return records


def resumed_and_finished(directory: Path, state: dict) -> Tracker:
    tracker, clock = started(directory, state, start=5000.0)
    tracker.begin("train", 0)
    clock.advance(5.0)
    tracker.end("train")
    tracker.finish()
    return tracker


KILLED_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from greencallbacks.carbon import Carbon
    from greencallbacks.meter import Meter
    from greencallbacks.tracker import Tracker
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    clock = FakeClock()
    tracker = Tracker(output_dir=sys.argv[1], run_id={run!r}, carbon=Carbon(intensity=200.0))
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w={power!r})], fallback=None, clock=clock,
                        wall_clock=lambda: clock() + 1.7e9))
    tracker.begin("train", 0)
    clock.advance(10.0)
    if sys.argv[2] == "next-epoch":  # epoch 0 written, killed in epoch 1 with no checkpoint
        tracker.end("train")
        tracker.begin("train", 1)
    else:
        Path(sys.argv[2]).write_text(json.dumps(tracker.state_dict()))  # the checkpoint, at 10 s
    for _ in range(18):  # to 100 s, a logging step every 5 s: the heartbeat at 60 s
        clock.advance(5.0)
        tracker.add_samples(8)
        tracker.live()
    print("at 100 s", flush=True)
    time.sleep(60)  # killed here, inside the epoch
    """
)


def test_a_killed_process_loses_at_most_one_heartbeat_of_its_open_phase(tmp_path):
    script, out, checkpoint = tmp_path / "child.py", tmp_path / "out", tmp_path / "checkpoint.json"
    script.write_text(KILLED_CHILD.format(repo=str(REPO), run=RUN, power=POWER_W))
    killed_after_line([str(script), str(out), str(checkpoint)], "at 100 s\n")
    assert read_run_records(RUN, [out]) == []  # killed inside its first phase: nothing written
    state = json.loads(checkpoint.read_text())

    resumed_and_finished(out, state)

    records = totals_match_records(out)
    carried = [r for r in records if r.carried]
    assert [(r.phase, r.epoch, r.attempt, r.partial) for r in carried] == [("train", 0, 0, True)]
    # Up to the last heartbeat (the checkpoint's measure alone: 10 s), within one HEARTBEAT_S of the kill.
    assert 100.0 - HEARTBEAT_S <= carried[0].duration_s <= 100.0
    assert carried[0].duration_s > 10.0
    assert carried[0].energy_kwh * 3.6e6 == pytest.approx(carried[0].duration_s * POWER_W)
    assert carried[0].samples > 0
    assert {r.attempt for r in records if not r.carried} == {1}


def test_the_heartbeat_replaces_the_checkpoints_measure_where_the_run_has_records(tmp_path):
    """Records on disk (a gap written at the epoch's begin): the totals are re-derived from them,
    and the heartbeat's measure of the phase counted instead of the checkpoint's, once."""
    tracker, clock = started(tmp_path)
    clock.advance(2.0)
    tracker.begin("train", 0)  # the gap before it is written here
    clock.advance(10.0)
    state = tracker.state_dict()
    steps(tracker, clock, 90.0)  # the first heartbeat at the first logging step 60 s after start: 62 s
    killed(tracker)

    resumed = resumed_and_finished(tmp_path, state)

    records = totals_match_records(tmp_path)
    assert [(r.phase, round(r.duration_s, 6)) for r in records if r.carried] == [("train", 60.0)]
    assert resumed.total_energy_j == pytest.approx(sum(r.energy_kwh for r in records) * 3.6e6)


def test_a_phase_begun_after_the_checkpoint_is_carried_from_the_heartbeat(tmp_path):
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    clock.advance(5.0)
    tracker.end("train")
    clock.advance(5.0)
    state = tracker.state_dict()  # in the gap after epoch 0
    clock.advance(2.0)
    tracker.begin("train", 1)  # the gap (7 s) is written here
    steps(tracker, clock, 88.0, every=4.0)  # to 100 s; a heartbeat at 60 s
    killed(tracker)

    resumed_and_finished(tmp_path, state)

    records = totals_match_records(tmp_path)
    carried = [r for r in records if r.carried]
    assert [(r.phase, r.epoch) for r in carried] == [("train", 1)]
    assert carried[0].duration_s == pytest.approx(60.0 - 12.0)
    assert [round(r.duration_s, 6) for r in records if r.phase == "other" and r.epoch == 0] == [7.0]  # once


def test_a_checkpoint_later_than_the_heartbeat_is_carried_instead(tmp_path):
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    steps(tracker, clock, 90.0)  # a heartbeat at 60 s
    state = tracker.state_dict()  # at 90 s
    steps(tracker, clock, 5.0)
    killed(tracker)

    resumed_and_finished(tmp_path, state)

    carried = [r for r in totals_match_records(tmp_path) if r.carried]
    assert [round(r.duration_s, 6) for r in carried] == [90.0]


def test_resuming_twice_carries_once_and_numbers_attempts_past_the_killed_ones(tmp_path):
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    clock.advance(10.0)
    state = tracker.state_dict()
    steps(tracker, clock, 90.0)  # heartbeat at 60 s
    killed(tracker)
    # The next attempt carries that, trains 70 s (its own heartbeat at 60 s) and is killed too,
    # before writing any record of its own.
    second, clock = started(tmp_path, state, start=3000.0)
    second.begin("train", 0)
    steps(second, clock, 70.0)
    killed(second)

    resumed_and_finished(tmp_path, state)  # from the same checkpoint again
    resumed_and_finished(tmp_path, state)  # and once more: nothing new to carry

    records = totals_match_records(tmp_path)
    carried = sorted((r.attempt, round(r.duration_s, 6)) for r in records if r.carried)
    assert carried == [(0, 60.0), (1, 60.0)]
    assert sorted({r.attempt for r in records if not r.carried}) == [2, 3]


def test_a_run_that_ends_normally_leaves_no_heartbeat(tmp_path):
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    clock.advance(10.0)
    state = tracker.state_dict()
    steps(tracker, clock, 90.0)
    assert the_heartbeat(tmp_path).is_file()
    tracker.end("train")
    tracker.finish()
    assert not the_heartbeat(tmp_path).exists()
    before = totals_match_records(tmp_path)

    resumed_and_finished(tmp_path, state)

    records = totals_match_records(tmp_path)
    assert not any(r.carried for r in records)
    assert len(records) == len(before) + 1


def test_the_heartbeat_writes_at_most_once_per_heartbeat_period(tmp_path, monkeypatch):
    writes = []
    real = heartbeat.write_json_atomic
    monkeypatch.setattr(heartbeat, "write_json_atomic", lambda path, data: writes.append(data) or real(path, data))
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    steps(tracker, clock, 200.0, every=0.5)  # 400 logging steps
    assert [round(data["open_records"][-1]["duration_s"], 6) for data in writes] == [60.0, 120.0, 180.0]
    assert writes[-1]["run_id"] == RUN and writes[-1]["attempt"] == 0
    tracker.finish()
    # The heartbeat billed nothing: the phase is one segment, as without it.
    assert [r.duration_s for r in tracker.records if r.phase == "train"] == [200.0]


class RankOne:
    rank, world_size = 1, 2

    def all_gather(self, obj):
        return [obj, obj]

    def gather_floats(self, values):
        return [values, values]


def test_a_later_rank_writes_its_own_part_beside_rank_zeros(tmp_path):
    """Each rank measures its own devices: rank 1 writes its part to a file of its own (the resume
    sums them: test_ledger_ranks.py), never over rank 0's."""
    clock = FakeClock()
    tracker = Tracker(output_dir=tmp_path, run_id=RUN)
    tracker.start(Meter([ScriptedSensor("gpu1", clock)], fallback=None, clock=clock), reducer=RankOne())
    tracker.begin("train", 0)
    steps(tracker, clock, 100.0)
    assert not the_heartbeat(tmp_path).exists()
    mine = json.loads(the_heartbeat(tmp_path, RUN, 1).read_text())
    assert mine["rank"] == 1 and [r["components"][0]["name"] for r in mine["open_records"] if r["phase"] == "train"] == ["gpu1"]
    assert [rank for _, rank in heartbeat.heartbeat_files(RUN, [tmp_path])] == [1]


@pytest.mark.parametrize("call", ["train", "evaluate"])
def test_the_hf_callback_writes_the_heartbeat_between_its_logging_steps(tmp_path, monkeypatch, call):
    """HF logs every 500 steps by default (hours apart on a large model), and an evaluation has no
    logging steps: the callback asks for the heartbeat at every training step and evaluation
    batch, and the open phase is in it."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args

    monkeypatch.setattr(checkpoint_state, "HEARTBEAT_S", 0.0)  # due at every step
    energy = EnergyCallback(intensity=400.0, sensors=[scripted_sensor()], output_dir=tmp_path / "energy")
    seen = []

    class Probe(TrainerCallback):  # after ours: reads what a kill at this step would leave
        def read(self):
            path = the_heartbeat(tmp_path / "energy", energy.tracker.run_id)
            seen.append({r["phase"] for r in json.loads(path.read_text())["open_records"]} if path.exists() else set())

        def on_step_end(self, args, state, control, **kwargs):
            self.read()

        def on_prediction_step(self, args, state, control, **kwargs):
            self.read()

    trainer = Trainer(model=tiny_model(), args=training_args(tmp_path / "out", logging_strategy="steps", logging_steps=500,
                                                             eval_strategy="no", num_train_epochs=1),
                      train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(TRAIN_SAMPLES),
                      callbacks=[energy, Probe()])
    getattr(trainer, call)()
    phase, first = ("train", 0) if call == "train" else ("validation", 1)  # (an evaluation's first batch begins it)
    assert len(seen) > 2 and all(phase in phases for phases in seen[first:])
    assert not the_heartbeat(tmp_path / "energy", energy.tracker.run_id).exists()  # the run ended: removed


def test_the_lightning_callback_writes_the_heartbeat_without_step_values_and_in_validation(tmp_path, monkeypatch):
    """Lightning's logging steps may be hours apart, and with ``step_metrics=False`` there are
    none: the callback asks for the heartbeat at every batch, training and validation alike."""
    pytest.importorskip("lightning")
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tests.lightning_models import flavour, trainer_kwargs

    monkeypatch.setattr(checkpoint_state, "HEARTBEAT_S", 0.0)  # due at every batch
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    energy = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                            step_metrics=False, output_dir=tmp_path / "energy")
    seen = []

    class Probe(L.Callback):  # after ours: reads what a kill at this batch would leave
        def read(self):
            saved = json.loads(the_heartbeat(tmp_path / "energy", energy.tracker.run_id).read_text())
            seen.append({(r["phase"], r["epoch"]) for r in saved["open_records"]})

        def on_train_batch_end(self, *args):
            self.read()

        def on_validation_batch_end(self, *args, **kwargs):
            self.read()

    data = TensorDataset(torch.randn(20, 4), torch.randn(20, 1))
    L.Trainer(max_epochs=1, logger=False, callbacks=[energy, Probe()], limit_val_batches=2,
              **trainer_kwargs(num_sanity_val_steps=0)).fit(
        TinyModel(), DataLoader(data, batch_size=2), DataLoader(data, batch_size=10))
    assert len(seen) == 10 + 2
    assert all(("train", 0) in phases for phases in seen)
    assert all(("validation", 0) in phases for phases in seen[10:])
    assert not the_heartbeat(tmp_path / "energy", energy.tracker.run_id).exists()  # the run ended: removed


KERAS_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, {repo!r})
    import keras
    import numpy as np
    import greencallbacks.checkpoint_state as checkpoint_state
    import greencallbacks.watch as watch_module
    from greencallbacks.keras import EnergyCallback
    from greencallbacks.heartbeat import heartbeat_files
    from tests.fakes.scripted import ScriptedSensor

    checkpoint_state.HEARTBEAT_S = 0.0  # due at every look of the watch thread
    watch_module.POLL_S = 0.01
    out = Path(sys.argv[1])
    energy = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0, output_dir=out)

    class KilledMidEpoch(keras.callbacks.Callback):
        async_safe = True  # like ours: Keras keeps dispatching batch hooks off the training thread

        def on_train_batch_end(self, batch, logs=None):
            if batch != 3:
                return
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # no batch hook of ours writes it: the watch thread does
                try:
                    path = heartbeat_files(energy.tracker.run_id, [out])[0][0]
                    if any(r["phase"] == "train" for r in json.loads(path.read_text())["open_records"]):
                        break
                except (IndexError, OSError, ValueError):
                    pass
                time.sleep(0.01)
            print(energy.tracker.run_id, flush=True)
            time.sleep(60)  # killed here, inside epoch 0

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((64, 4), dtype="float32")
    model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[energy, KilledMidEpoch()])
    """
)


def test_keras_writes_the_heartbeat_from_its_watch_thread_without_any_batch_logging(tmp_path):
    """Without a TensorBoard that logs batches, Keras runs no batch hook of ours on the training
    thread: the watch thread asks for the heartbeat, and a fit killed inside its first epoch leaves
    that epoch's open phase on disk."""
    pytest.importorskip("keras")
    import subprocess
    import sys

    script, out = tmp_path / "child.py", tmp_path / "out"
    script.write_text(KERAS_CHILD.format(repo=str(REPO)))
    child = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True,
                             env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        run_id = child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    saved = json.loads(the_heartbeat(out, run_id).read_text())
    train = [r for r in saved["open_records"] if r["phase"] == "train"]
    assert [(r["epoch"], r["partial"]) for r in train] == [(0, True)]
    assert train[0]["energy_kwh"] > 0


def test_a_heartbeat_asked_from_another_thread_never_waits_for_a_boundary(tmp_path, monkeypatch):
    """The Keras watch thread asks while the training thread may be inside a boundary: it skips
    that look (the next one writes) rather than read phases half changed or hold training up."""
    import threading

    monkeypatch.setattr(checkpoint_state, "HEARTBEAT_S", 0.0)
    tracker, clock = started(tmp_path)
    tracker.begin("train", 0)
    clock.advance(5.0)
    with tracker._phases_lock:  # as a boundary on the training thread holds it
        asker = threading.Thread(target=tracker.heartbeat)
        asker.start()
        asker.join(timeout=10)
        assert not asker.is_alive() and not the_heartbeat(tmp_path).exists()
    asker = threading.Thread(target=tracker.heartbeat)
    asker.start()
    asker.join(timeout=10)
    path = the_heartbeat(tmp_path)
    assert [(r["phase"], r["duration_s"]) for r in json.loads(path.read_text())["open_records"]] == [("train", 5.0)]
    tracker.finish()
    assert not path.exists()


def test_a_run_id_too_long_for_a_file_name_keeps_its_heartbeat_found(tmp_path):
    """Its heartbeat's name is cut (the file system's 255 bytes), and still found for the resume."""
    run = "sweep/" + "x" * 200  # its name fits bare (232 bytes), not with the session's tail and the temporary name's
    clock = FakeClock()
    tracker = Tracker(output_dir=tmp_path, run_id=run, carbon=Carbon(intensity=200.0))
    tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock))
    tracker.begin("train", 0)
    steps(tracker, clock, 90.0)
    assert len(tracker._heartbeat_written.name) + TEMPORARY_NAME_BYTES <= 255
    assert [(path, rank) for path, rank in heartbeat.heartbeat_files(run, [tmp_path])] == [(tracker._heartbeat_written, 0)]
    assert [r.phase for r in heartbeat.heartbeat_records(run, [tmp_path])] == ["train"]
    tracker.finish()
