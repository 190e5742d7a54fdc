"""What the HF ``Trainer`` adapter logs through HF's own path (``state.log_history``, TensorBoard,
MLflow's file store), checked against the run's records at every step of a user flow: step-cadence
totals (``logging_steps`` / ``eval_steps``) under gradient accumulation with a last partial window,
across a crash and a resume from a mid-epoch checkpoint with ``max_steps`` raised; a notebook's
Ctrl-C, ``train()`` again on the same Trainer and a resume; ``evaluate()`` / ``predict()`` after.

Each logged entry is traced to the records: an epoch's ``energy_kwh`` is its record's and its
``energy_kwh_total`` the run's records written by then; a loop's ``<prefix>_energy_kwh_total`` its
prefix's records so far; step totals never fall within a run (a resume goes on from every record of
the attempts before it) and never pass the summary. Real Trainers on the tiny BERT of ``hf_tiny``,
a scripted constant-power sensor, PUE 1.5.
"""

from __future__ import annotations

import json
import math
import os
import random

import pytest

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, TEST_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tensorboard_dir, tiny_model,
    training_args,
)

pytestmark = pytest.mark.slow
INTENSITY, PUE = 300.0, 1.5
TOTALS = ("energy_kwh_total", "co2eq_g_total")


class StopAt(TrainerCallback):
    """Raises ``error`` once, at the end of ``step`` (a bug, or Ctrl-C in a notebook)."""

    def __init__(self, step: int, error: type[BaseException] = RuntimeError) -> None:
        self.step, self.error, self.armed = step, error, True

    def on_step_end(self, args, state, control, **kwargs):
        if self.armed and state.global_step == self.step:
            self.armed = False
            raise self.error(f"stopped at step {self.step}")


def new_callback() -> EnergyCallback:
    return EnergyCallback(intensity=INTENSITY, pue=PUE, sensors=[scripted_sensor()])


def make_trainer(out, callback, extra=(), **settings) -> Trainer:
    return Trainer(model=tiny_model(), args=training_args(out, **settings), train_dataset=TokenDataset(TRAIN_SAMPLES),
                   eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[callback, *extra])


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def check_logged(history: list[dict], out, callback: EnergyCallback, *, resumed_at: int | None = None,
                 context: str = "") -> list:
    """Every energy value in ``history`` traced to the records of the callback's run; returns them."""
    assert not meter_threads() and not callback.session.running, context
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=context)
    so_far, prefix_so_far, running, by_prefix = {}, {}, 0.0, {}
    for r in records:  # in file order: as each phase ended
        running += r.energy_kwh
        so_far[id(r)] = running
        if r.metric_prefix is not None:
            by_prefix[r.metric_prefix] = by_prefix.get(r.metric_prefix, 0.0) + r.energy_kwh
            prefix_so_far[id(r)] = by_prefix[r.metric_prefix]
    before_this_attempt = sum(r.energy_kwh for r in records if r.attempt < records[-1].attempt)
    totals = []
    for entry in history:
        where = f"{entry} [{context}]"
        if "energy_kwh_total" in entry:
            totals.append(entry["energy_kwh_total"])
            assert entry["co2eq_g_total"] == pytest.approx(entry["energy_kwh_total"] * INTENSITY, rel=1e-9), where
            if resumed_at is not None and entry["step"] > resumed_at:
                assert entry["energy_kwh_total"] >= before_this_attempt, where  # goes on from every record before
        if "energy_kwh" in entry:  # an epoch's end
            (record,) = [r for r in records if r.phase == "train" and not r.partial and r.step == entry["step"]
                         and r.energy_kwh == entry["energy_kwh"]]
            assert close(entry["energy_kwh_total"], so_far[id(record)]), where
        elif "energy_kwh_total" in entry:  # a logging or evaluation step: IT power of a constant sensor
            assert entry["power_w"] == pytest.approx(POWER_W, rel=0.2), where
        for key in entry:
            if key.endswith("_energy_kwh") and key != "energy_kwh":
                prefix = key[: -len("_energy_kwh")]
                (record,) = [r for r in records if r.metric_prefix == prefix and r.energy_kwh == entry[key]]
                assert close(entry[f"{prefix}_energy_kwh_total"], prefix_so_far[id(record)]), where
    assert totals == sorted(totals), context
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["run_id"] == callback.tracker.run_id and all(t <= summary["energy_kwh"] for t in totals), context
    # The last epoch this attempt ended is the last logged: its total, every record written by then.
    ended = [i for i, r in enumerate(records) if r.phase == "train" and not r.partial and r.attempt == records[-1].attempt]
    if ended:
        last_epoch = [e for e in history if "energy_kwh" in e][-1]
        assert close(last_epoch["energy_kwh_total"], sum(r.energy_kwh for r in records[: ended[-1] + 1])), context
    return records


def logged(entries: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in entries if key in e]


def test_step_totals_across_a_crash_and_a_mid_epoch_resume_under_accumulation_reach_every_reporter(tmp_path, monkeypatch):
    """Windows of 3 over 4 batches: 2 steps an epoch, the second of one batch. Every step logs and
    every other evaluates, a checkpoint each step; a crash at step 4 (epoch 1's end, before its
    checkpoint), a resume from checkpoint-3 (inside epoch 1) with ``max_steps`` raised from 6 to 7, then
    ``evaluate()`` and ``predict()``. TensorBoard and MLflow hold every entry each attempt logged, the
    values ``log_history`` held as it was logged."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x: the file store is opt-in
    mlflow.end_run()
    mlflow.set_tracking_uri(uri)
    out = tmp_path / "out"
    # max_steps: transformers 4.47 plans one step an epoch here (4 // 3) and would stop at step 3.
    settings = dict(max_steps=6, gradient_accumulation_steps=3, logging_strategy="steps", logging_steps=1,
                    eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=1,
                    report_to=["tensorboard", "mlflow"], **tensorboard_dir(monkeypatch, tmp_path / "tb"))
    crashed = new_callback()
    first = make_trainer(out, crashed, [StopAt(4)], **settings)
    with pytest.raises(RuntimeError, match="stopped at step 4"):
        first.train()
    check_logged(first.state.log_history, out, crashed, context="crashed")
    callback = new_callback()
    resumed = make_trainer(out, callback, **{**settings, "max_steps": 7})
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    resumed.evaluate()
    resumed.predict(TokenDataset(TEST_SAMPLES, seed=2))
    mlflow.end_run()  # the crashed train() left it open: the resume logged into it too
    assert callback.tracker.run_id == crashed.tracker.run_id
    history = resumed.state.log_history
    records = check_logged(history, out, callback, resumed_at=3, context="resumed")
    assert [(r.attempt, r.partial) for r in records if r.phase == "train"][:3] == [(0, False), (0, True), (1, False)]
    assert records[-1].attempt == 1 and resumed.state.global_step == 7
    assert [r.metric_prefix for r in records if r.phase in ("validation", "predict")][-2:] == ["eval", "test"]
    assert history[-1]["test_energy_kwh"] == records[-2].energy_kwh  # predict(), then the gap after it

    # Each reporter holds what each attempt logged: the crashed one's, then the resume's past checkpoint-3
    # (log_history holds the checkpoint's entries instead, none past step 3 of the crashed attempt).
    # (4.53 logs again at step 3 as the resume begins: the checkpoint's own entries are counted off.)
    restored = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    since_checkpoint = history[len(restored):]

    def attempts_logged(key: str) -> list[tuple[int, float]]:
        return logged(first.state.log_history, key) + logged(since_checkpoint, key)

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    for key, tag in [(k, f"train/{k}") for k in TOTALS] + [("eval_energy_kwh_total", "eval/energy_kwh_total"),
                                                           ("test_energy_kwh", "test/energy_kwh")]:
        scalars, mine = events.Scalars(tag), attempts_logged(key)
        assert [s.step for s in scalars] == [step for step, _ in mine], tag
        assert [s.value for s in scalars] == pytest.approx([value for _, value in mine], rel=1e-6), tag  # float32

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    for key in TOTALS + ("power_w", "eval_energy_kwh_total", "test_co2eq_g"):
        theirs = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert theirs == sorted(attempts_logged(key)), key

def test_a_notebook_interrupt_then_train_again_then_resume(tmp_path):
    """Ctrl-C (a ``KeyboardInterrupt`` from a callback) inside epoch 1; ``train()`` again on the same
    Trainer: a new run, whose logged totals start from its own records; then
    ``train(resume_from_checkpoint=True)`` with an epoch more goes on in that run; then ``evaluate()``."""
    out = tmp_path / "out"
    callback = new_callback()
    trainer = make_trainer(out, callback, [StopAt(5, KeyboardInterrupt)], logging_strategy="steps", logging_steps=2,
                           save_strategy="steps", save_steps=3)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    interrupted = callback.tracker.run_id
    check_logged(trainer.state.log_history, out, callback, context="interrupted")

    trainer.train()
    again = callback.tracker.run_id
    assert again != interrupted
    records = check_logged(trainer.state.log_history, out, callback, context="again")
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == [(0, TRAIN_SAMPLES), (1, TRAIN_SAMPLES)]

    trainer.args.num_train_epochs = 3
    resumed_at = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))  # the latest: the new run's
    trainer.train(resume_from_checkpoint=True)
    assert callback.tracker.run_id == again
    trainer.evaluate()
    records = check_logged(trainer.state.log_history, out, callback, resumed_at=resumed_at, context="resumed")
    assert [(r.attempt, r.epoch) for r in records if r.phase == "train"][-1] == (1, 2)
    assert {r.run_id for r in read_records(out)} == {interrupted, again}


@pytest.mark.parametrize("seed", range(int(os.environ.get("GC_FLOW_SEEDS", "1"))))
def test_random_step_logging_flows_log_what_the_records_say(tmp_path, seed):
    """Random settings (accumulation, batch, logging, evaluation and save steps), then three of:
    train on a new Trainer, train again on the same one, resume any checkpoint on a new or the same
    Trainer (maybe with ``max_steps`` raised), each maybe stopped by a bug or Ctrl-C at some step,
    maybe followed by ``evaluate()`` and ``predict()``. Run more seeds with GC_FLOW_SEEDS=20."""
    rng = random.Random(seed)
    out = tmp_path / "out"
    settings = dict(num_train_epochs=rng.choice([2, 3]), gradient_accumulation_steps=rng.choice([1, 2, 3]),
                    per_device_train_batch_size=rng.choice([4, 8]), logging_strategy="steps",
                    logging_steps=rng.choice([1, 2]), eval_strategy=rng.choice(["steps", "epoch", "no"]),
                    eval_steps=rng.choice([1, 2, 3]), save_strategy="steps", save_steps=rng.choice([1, 2, 3]))
    steps = [f"seed {seed}: {settings}"]
    trainer = callback = None
    for _ in range(3):
        checkpoints = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
        op = rng.choice(["train", "again", "resume", "resume on the same Trainer"])
        on_the_same = op in ("again", "resume on the same Trainer")
        if (op.startswith("resume") and not checkpoints) or (on_the_same and trainer is None):
            op = "train"
        checkpoint = rng.choice(sorted(checkpoints)) if op.startswith("resume") else None
        resumed_at = int(checkpoint.name.split("-")[1]) if checkpoint else None
        if checkpoint and rng.random() < 0.5:
            settings["max_steps"] = resumed_at + rng.randint(1, 6)
        if op in ("train", "resume"):
            callback = new_callback()
            trainer = make_trainer(out, callback, **settings)
        trainer.args.max_steps = settings.get("max_steps", -1)
        error = rng.choice([None, RuntimeError, KeyboardInterrupt])
        stop = StopAt(rng.randint(1, 12), error) if error else None
        if stop:
            trainer.add_callback(stop)
        steps.append(f"{op} {checkpoint and checkpoint.name} max_steps={trainer.args.max_steps} "
                     f"{error and error.__name__} at {stop and stop.step}")
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except (RuntimeError, KeyboardInterrupt):
            pass
        if stop:
            trainer.remove_callback(stop)
        if rng.random() < 0.5:
            trainer.evaluate()
            trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
            steps.append("evaluate, predict")
        check_logged(trainer.state.log_history, out, callback, resumed_at=resumed_at, context=" / ".join(steps))
