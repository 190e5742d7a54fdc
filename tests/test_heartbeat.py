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

import greencallbacks.tracker as tracker_module
from greencallbacks.carbon import Carbon
from greencallbacks.ledger import read_run_records
from greencallbacks.meter import Meter
from greencallbacks.tracker import HEARTBEAT_S, SUMMARY_FILE, Tracker, heartbeat_path
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
    Path(sys.argv[2]).write_text(json.dumps(tracker.state_dict()))  # the checkpoint, at 10 s
    for _ in range(18):  # to 100 s, a logging step every 5 s
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
    assert heartbeat_path(tmp_path, RUN).is_file()
    tracker.end("train")
    tracker.finish()
    assert not heartbeat_path(tmp_path, RUN).exists()
    before = totals_match_records(tmp_path)

    resumed_and_finished(tmp_path, state)

    records = totals_match_records(tmp_path)
    assert not any(r.carried for r in records)
    assert len(records) == len(before) + 1


def test_the_heartbeat_writes_at_most_once_per_heartbeat_period(tmp_path, monkeypatch):
    writes = []
    real = tracker_module.write_json_atomic
    monkeypatch.setattr(tracker_module, "write_json_atomic", lambda path, data: writes.append(data) or real(path, data))
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


def test_only_rank_zero_writes_the_heartbeat(tmp_path):
    clock = FakeClock()
    tracker = Tracker(output_dir=tmp_path, run_id=RUN)
    tracker.start(Meter([ScriptedSensor("gpu1", clock)], fallback=None, clock=clock), reducer=RankOne())
    tracker.begin("train", 0)
    steps(tracker, clock, 100.0)
    assert not heartbeat_path(tmp_path, RUN).exists()


def test_the_hf_callback_writes_the_heartbeat_between_its_logging_steps(tmp_path, monkeypatch):
    """HF logs every 500 steps by default (hours apart on a large model): the callback writes the
    heartbeat at any step it is due, and the open training phase is in it, mid-epoch."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args

    monkeypatch.setattr(tracker_module, "HEARTBEAT_S", 0.0)  # due at every step
    energy = EnergyCallback(intensity=400.0, sensors=[scripted_sensor()], output_dir=tmp_path / "energy")
    seen = []

    class Probe(TrainerCallback):  # after ours: reads what a kill at this step would leave
        def on_step_end(self, args, state, control, **kwargs):
            saved = json.loads(heartbeat_path(tmp_path / "energy", energy.tracker.run_id).read_text())
            seen.append([(r["phase"], r["epoch"]) for r in saved["open_records"]])

    Trainer(model=tiny_model(), args=training_args(tmp_path / "out", logging_strategy="steps", logging_steps=500,
                                                    eval_strategy="no", num_train_epochs=1),
            train_dataset=TokenDataset(TRAIN_SAMPLES), callbacks=[energy, Probe()]).train()
    assert seen and all(("train", 0) in phases for phases in seen)
    assert not heartbeat_path(tmp_path / "energy", energy.tracker.run_id).exists()  # the run ended: removed
