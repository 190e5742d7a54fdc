"""Randomized user flows through the real HF Trainer, checking the ledger after every step.

Each seed draws a sequence of what people do: ``train()`` on a new Trainer, again on the same
Trainer (a new run), or ``resume_from_checkpoint=`` any checkpoint saved so far (at an epoch end
or mid-epoch by ``save_steps``), each maybe crashing (inside a training step, inside the
epoch-end evaluation, inside a checkpoint write, between epochs, or Ctrl-C); then ``evaluate`` /
``predict`` after training or on a Trainer that never trained. A scripted constant-power sensor
makes every record's energy follow its duration exactly. After every step: records sum to the
summary and to the last logged ``energy_kwh_total`` in ``state.log_history``, seq and attempts
are consistent, samples are exact, no meter thread is left. Run more seeds with GC_FLOW_SEEDS=20;
a failure names its seed and steps.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks import report  # noqa: E402
from greencallbacks.report import epoch_rows  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    BATCH, EVAL_SAMPLES, POWER_W, TEST_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args,
)

pytestmark = pytest.mark.slow
SEEDS = range(int(os.environ.get("GC_FLOW_SEEDS", "2")))
STEPS_PER_EPOCH = -(-TRAIN_SAMPLES // BATCH)  # 30 samples in batches of 8: 4 steps, the last of 6


class Boom(Exception):
    """What a bug or an OOM would raise."""


class Crash(TrainerCallback):
    """Raises at one point of a train(): inside a step, the epoch-end evaluation, or between epochs."""

    def __init__(self, where: str, epoch: int, step_in_epoch: int, error: type[BaseException]) -> None:
        self.where, self.epoch, self.step_in_epoch, self.error = where, epoch, step_in_epoch, error
        self.armed = True  # once: a checkpoint written before the crash may be resumed

    def on_step_end(self, args, state, control, **kwargs):
        if self.where == "train_step" and self.armed and state.global_step == self.epoch * STEPS_PER_EPOCH + self.step_in_epoch:
            self.armed = False
            raise self.error(f"in training step {state.global_step}")

    def on_prediction_step(self, args, state, control, **kwargs):
        # Inside train(), evaluation runs after the epoch's last step: state.epoch is then epoch + 1.
        if self.where == "evaluation" and self.armed and round(state.epoch or 0) == self.epoch + 1:
            self.armed = False
            raise self.error(f"in the evaluation of epoch {self.epoch}")

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.where == "between_epochs" and self.armed and round(state.epoch or 0) == self.epoch:
            self.armed = False
            raise self.error(f"between epochs, before epoch {self.epoch}")


def crash_in_checkpoint_write(trainer: Trainer, error: type[BaseException], nth: int) -> None:
    """The ``nth`` checkpoint write of this Trainer raises halfway (model written, state not)."""
    save_model = trainer.save_model
    calls = {"n": 0}

    def failing(*args, **kwargs):
        save_model(*args, **kwargs)
        if kwargs.get("_internal_call"):
            calls["n"] += 1
            if calls["n"] == nth:
                raise error(f"in checkpoint write {nth}")

    trainer.save_model = failing


def make_trainer(out: Path, callback: EnergyCallback, **overrides) -> Trainer:
    return Trainer(
        model=tiny_model(), args=training_args(out, **overrides), train_dataset=TokenDataset(TRAIN_SAMPLES),
        eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[callback],
    )


def new_callback() -> EnergyCallback:
    return EnergyCallback(intensity=300.0, sensors=[scripted_sensor()])


def last_logged_total(trainer: Trainer) -> float | None:
    values = [e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e]
    return values[-1] if values else None


def complete_checkpoints(out: Path) -> list[Path]:
    # A checkpoint write that crashed leaves a folder without trainer_state.json: not resumable.
    return sorted(p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists())


def check_samples(records, resumed_steps: dict[int, int], context: str) -> None:
    """Completed epochs saw every sample (the partial last batch of 6 included); the first epoch of
    an attempt resumed mid-epoch saw the rest; a cut-short epoch counts whole batches it finished."""
    first_train: dict[int, int] = {}
    for r in records:
        if r.phase == "train":
            first_train.setdefault(r.attempt, r.seq)
            if r.partial:
                assert r.samples <= TRAIN_SAMPLES, context
            elif first_train[r.attempt] == r.seq and r.attempt in resumed_steps:
                assert r.samples == TRAIN_SAMPLES - BATCH * (resumed_steps[r.attempt] % STEPS_PER_EPOCH), (repr(r), context)
            else:
                assert r.samples == TRAIN_SAMPLES, (repr(r), context)
        if r.phase == "validation" and not r.partial:
            assert r.samples == EVAL_SAMPLES, (repr(r), context)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_hf_flows_keep_the_ledger(tmp_path, seed):
    rng = random.Random(seed)
    checkpoints: list[tuple[Path, str, int]] = []  # (path, run id, epochs planned)
    runs: dict[str, dict] = {}  # run id -> {"dirs": output dirs, "resumed_steps": {attempt: global step}}
    dirs: list[Path] = []
    steps: list[str] = []
    callback = new_callback()
    trainer: Trainer | None = None
    for step in range(4):
        op = rng.choice(["train", "train", "repeat", "resume", "resume"])
        if op == "repeat" and trainer is None or op == "resume" and not checkpoints:
            op = "train"
        ckpt = rng.choice(checkpoints) if op == "resume" else None
        epochs = ckpt[2] if ckpt else rng.randint(2, 3)
        crash = rng.choice([None, None, "train_step", "evaluation", "checkpoint", "between_epochs"])
        crash_epoch, crash_step = rng.randrange(epochs), rng.randint(1, STEPS_PER_EPOCH)
        error = rng.choice([Boom, KeyboardInterrupt])
        save = rng.choice([{"save_strategy": "epoch"}, {"save_strategy": "steps", "save_steps": rng.choice([2, 3])}])
        fresh_callback = rng.random() < 0.5
        steps.append(f"{op}(epochs={epochs}, {save}, resume={ckpt and ckpt[0].name}, crash={crash}@{crash_epoch}.{crash_step} "
                     f"{error.__name__}, new callback={fresh_callback})")
        context = f"seed {seed}, steps: " + "; ".join(steps)
        out = tmp_path / f"out{step}"
        if op != "repeat":
            if fresh_callback:
                callback = new_callback()  # a new process builds a new callback
            trainer = make_trainer(out, callback, num_train_epochs=epochs, **save)
        else:
            out, epochs = Path(trainer.args.output_dir), int(trainer.args.num_train_epochs)
            crash_epoch = min(crash_epoch, epochs - 1)
            strategy = getattr(trainer.args.save_strategy, "value", trainer.args.save_strategy)
            steps[-1] = (f"repeat on the same Trainer (epochs={epochs}, save_strategy={strategy}, save_steps="
                         f"{trainer.args.save_steps}, crash={crash}@{crash_epoch}.{crash_step} {error.__name__})")
        extra = Crash(crash, crash_epoch, crash_step, error) if crash and crash != "checkpoint" else None
        if extra:
            trainer.add_callback(extra)
        if crash == "checkpoint":
            crash_in_checkpoint_write(trainer, error, nth=rng.randint(1, 3))
        before = {p: (p / "trainer_state.json").stat().st_mtime_ns for p in complete_checkpoints(out)}
        crashed = False
        try:
            trainer.train(resume_from_checkpoint=str(ckpt[0]) if ckpt else None)
        except (Boom, KeyboardInterrupt):
            crashed = True
        finally:
            if extra:
                trainer.remove_callback(extra)
            trainer.__dict__.pop("save_model", None)
        assert not meter_threads(), context
        assert not callback.session.running, context
        steps[-1] += f" -> {'raised' if crashed else 'returned'}"
        context = f"seed {seed}, steps: " + "; ".join(steps)
        run_id = callback.tracker.run_id
        if ckpt:
            assert run_id == ckpt[1], "a resume continues the checkpoint's run " + context
        else:
            assert run_id not in runs, "a train() without resume_from_checkpoint is a new run " + context
        run = runs.setdefault(run_id, {"resumed_steps": {}})
        # Written by this call: new, or rewritten by a repeated train() in the same output_dir.
        written = [p for p in complete_checkpoints(out) if before.get(p) != (p / "trainer_state.json").stat().st_mtime_ns]
        checkpoints[:] = [c for c in checkpoints if c[0] not in written] + [(p, run_id, epochs) for p in written]
        if out not in dirs:
            dirs.append(out)
        records = check_run(run_id, dirs, power_w=POWER_W, context=context)
        attempt = max(r.attempt for r in records)
        if ckpt:
            assert attempt >= 1, "a resume is a new attempt " + context
            run["resumed_steps"][attempt] = json.loads((ckpt[0] / "trainer_state.json").read_text())["global_step"]
        check_samples(records, run["resumed_steps"], context)
        logged = last_logged_total(trainer)
        if logged is not None and any(r.phase == "train" and not r.partial and r.attempt == attempt for r in records):
            logged_total_matches(records, logged, rel=1e-9, context=context)
        if crashed and any(r.phase == "train" for r in records):  # never a repeat of a finished run
            assert report.cut_short(report.configuration(records)), context
    print(f"seed {seed}: " + "; ".join(steps))  # what the seed covered (pytest -s shows it)
    # Inference after the last train() continues its run; on a Trainer that never trained it is a run of its own.
    context = f"seed {seed}, inference after: " + "; ".join(steps)
    run_id = callback.tracker.run_id
    trainer.evaluate()
    trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    assert not meter_threads(), context
    assert callback.tracker.run_id == run_id, context
    records = check_run(run_id, dirs, power_w=POWER_W, context=context)
    assert [r.samples for r in records if r.phase in ("validation", "predict")][-2:] == [EVAL_SAMPLES, TEST_SAMPLES], context
    alone = new_callback()
    untrained = make_trainer(tmp_path / "alone", alone)
    untrained.evaluate()
    assert not meter_threads(), context
    assert alone.tracker.run_id not in runs, context
    records = check_run(alone.tracker.run_id, [*dirs, tmp_path / "alone"], power_w=POWER_W, context=context)
    assert [(r.phase, r.samples) for r in records if r.phase != "other"] == [("validation", EVAL_SAMPLES)], context


# ------------------------------------------------------------------------------ named regressions
def test_train_twice_on_one_trainer_is_two_runs(tmp_path):
    callback = new_callback()
    trainer = make_trainer(tmp_path / "out", callback)
    trainer.train()
    first = callback.tracker.run_id
    trainer.train()
    second = callback.tracker.run_id
    assert first != second
    records = read_records(tmp_path / "out")
    for run_id in (first, second):
        mine = check_run(run_id, [tmp_path / "out"], power_w=POWER_W, context=run_id)
        assert [r.epoch for r in mine if r.phase == "train"] == [0, 1]
        assert {r.attempt for r in mine} == {0}
    # The second call's logged total is its own run's, not both.
    mine = [r for r in records if r.run_id == second]
    logged_total_matches(mine, last_logged_total(trainer), rel=1e-9, context="second train()")


def test_resume_after_a_mid_epoch_checkpoint_bills_everything_once(tmp_path):
    """Crash in epoch 1 after a ``save_steps`` checkpoint at step 6 (two steps into epoch 1), resume from it."""
    out = tmp_path / "out"
    first = new_callback()
    trainer = make_trainer(out, first, num_train_epochs=3, save_strategy="steps", save_steps=6)
    trainer.add_callback(Crash("train_step", 1, 3, Boom))  # step 7: after checkpoint-6
    with pytest.raises(Boom):
        trainer.train()
    assert not meter_threads()
    run_id = first.tracker.run_id
    assert complete_checkpoints(out) == [out / "checkpoint-6"]

    second = new_callback()  # a new process
    resumed = make_trainer(out, second, num_train_epochs=3, save_strategy="steps", save_steps=6)
    resumed.train(resume_from_checkpoint=True)
    assert not meter_threads()
    assert second.tracker.run_id == run_id
    records = check_run(run_id, [out], power_w=POWER_W, context="mid-epoch resume")
    summary = json.loads((out / "energy-summary.json").read_text())
    # Nothing lost, nothing doubled: the run's total is every record of both attempts, once.
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert second.tracker.totals["train"].count == len([r for r in records if r.phase == "train"])
    train = [(r.attempt, r.epoch, r.partial, r.samples) for r in records if r.phase == "train"]
    # Attempt 0 crashed after 3 steps of epoch 1 (3 x 8 samples); attempt 1 redid its last two.
    assert train == [(0, 0, False, 30), (0, 1, True, 24), (1, 1, False, 14), (1, 2, False, 30)]
    logged_total_matches(records, last_logged_total(resumed), rel=1e-9, context="mid-epoch resume")

    # The resumed epoch is two rows in the report, each with its own J/sample, not one "partial" row.
    rows = [row for row in epoch_rows(records) if row["epoch"] == 1]
    assert [(row["attempt"], row["partial"], row["redone"]) for row in rows] == [(0, True, True), (1, False, False)]
    redo = [r for r in records if r.phase == "train" and r.epoch == 1 and r.attempt == 1][0]
    assert rows[1]["j_per_sample"] == pytest.approx(redo.energy_j / 14, rel=1e-9)
    done = subprocess.run([sys.executable, "-m", "greencallbacks", "report", str(out), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # Resumed from the checkpoint inside it (14 of 30 samples trained again), not redone whole.
    assert "(attempt 0: cut short, resumed)" in done.stdout and "1 (attempt 1)" in done.stdout, done.stdout
