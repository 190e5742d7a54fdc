"""The HF ``Trainer`` adapter on everyday paths beyond ``test_hf.py``: a Trainer subclass, a callback
removed or shared, two callbacks through a resume, an ``evaluate()`` that raises after its loop,
``dataloader_drop_last``, reporters that log ``predict()`` themselves, a crash's step.

Real Trainers on the tiny BERT of ``hf_tiny``, a scripted constant-power sensor.
"""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from greencallbacks import watch  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, TEST_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args,
)

pytestmark = pytest.mark.slow


def make_callback(**kwargs) -> EnergyCallback:
    return EnergyCallback(intensity=kwargs.pop("intensity", 400.0), sensors=[scripted_sensor()], **kwargs)


def make_trainer(out, callbacks, cls=Trainer, **overrides) -> Trainer:
    return cls(model=tiny_model(), args=training_args(out, **overrides), train_dataset=TokenDataset(TRAIN_SAMPLES),
               eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=callbacks)


class Crash(TrainerCallback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise RuntimeError(f"crash at step {self.at_step}")


def test_a_trainer_subclass_overriding_evaluation_loop_with_args_and_kwargs_is_measured(tmp_path):
    """Regression: an override ``evaluation_loop(self, *args, **kwargs)`` made the loop wrapper
    raise KeyError('metric_key_prefix') into train() and evaluate(). Its arguments are now read
    from its ``**kwargs`` (or as Trainer's own loop takes them)."""

    class MyTrainer(Trainer):
        def evaluation_loop(self, *args, **kwargs):
            output = super().evaluation_loop(*args, **kwargs)
            output.metrics[f"{kwargs.get('metric_key_prefix', 'eval')}_extra"] = 1.0
            return output

    callback = make_callback()
    trainer = make_trainer(tmp_path / "out", [callback], cls=MyTrainer)
    trainer.train()
    evaluated = trainer.evaluate(metric_key_prefix="holdout")
    predicted = trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    assert evaluated["holdout_energy_kwh"] > 0 and evaluated["holdout_extra"] == 1.0
    assert predicted.metrics["test_energy_kwh"] > 0
    records = read_records(tmp_path / "out")
    assert [(r.phase, r.metric_prefix, r.samples) for r in records if r.phase in ("validation", "predict")] == [
        ("validation", "eval", EVAL_SAMPLES), ("validation", "eval", EVAL_SAMPLES),
        ("validation", "holdout", EVAL_SAMPLES), ("predict", "test", TEST_SAMPLES)]


def test_a_loop_whose_arguments_cannot_be_read_runs_unmeasured_with_one_warning(tmp_path, monkeypatch):
    import greencallbacks.hf as hf

    def unreadable(*args, **kwargs):
        raise KeyError("metric_key_prefix")

    monkeypatch.setattr(hf._wrappers, "_loop_arguments", unreadable)
    callback = make_callback()
    trainer = make_trainer(tmp_path / "out", [callback])
    with pytest.warns(EnergyWarning, match="could not read the arguments of Trainer.evaluation_loop") as caught:
        first, second = trainer.evaluate(), trainer.evaluate()
    assert len([w for w in caught if "could not read the arguments" in str(w.message)]) == 1
    assert "eval_loss" in first and "eval_loss" in second and "eval_energy_kwh" not in second
    assert not callback.session.running


def test_a_removed_callback_stops_measuring(tmp_path):
    """Regression: after ``remove_callback`` the Trainer's wrappers still drove the callback: a
    later evaluate() started its meter and never stopped it (no on_evaluate reached it), and
    appended records to its finished run."""
    callback = make_callback()
    trainer = make_trainer(tmp_path / "out", [callback], num_train_epochs=1)
    trainer.train()
    written = read_records(tmp_path / "out")
    trainer.remove_callback(callback)
    metrics = trainer.evaluate()
    trainer.train()
    assert not callback.session.running
    assert read_records(tmp_path / "out") == written
    assert not any(key.startswith("eval_energy") for key in metrics)

    trainer.add_callback(callback)  # back in: it measures again
    assert trainer.evaluate()["eval_energy_kwh"] > 0
    assert not callback.session.running


@pytest.mark.parametrize("restore_callback_states", [False, True])
def test_two_callbacks_resume_each_its_own_run(tmp_path, restore_callback_states):
    """Regression: two EnergyCallbacks (two grids) through a crash and a resume. HF keeps several
    callbacks of one class as a list in ``stateful_callbacks``; the callback overwrote it with its
    own dict, so the checkpoint kept one entry and on resume the 50 g callback continued the 500 g
    one's run (one run priced on two grids), the other starting a new run as attempt 1."""
    out = tmp_path / "out"

    def attempt(crash: bool):
        low, high = make_callback(intensity=50.0), make_callback(intensity=500.0)
        trainer = make_trainer(out, [low, high] + ([Crash(6)] if crash else []), num_train_epochs=3,
                               eval_strategy="no", save_strategy="epoch",
                               restore_callback_states_from_checkpoint=restore_callback_states)
        if crash:
            with pytest.raises(RuntimeError, match="crash at step 6"):
                trainer.train()
        else:
            trainer.train(resume_from_checkpoint=True)
        watch.settle()
        return trainer, (low, high)

    _, first = attempt(crash=True)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["EnergyCallback"]
    assert isinstance(saved, list) and {e["args"]["intensity"] for e in saved} == {50.0, 500.0}
    trainer, second = attempt(crash=False)
    assert [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EnergyCallback)] == list(second)
    records = read_records(out)
    for before, after, grid in zip(first, second, (50.0, 500.0)):
        assert after.tracker.run_id == before.tracker.run_id
        mine = [r for r in records if r.run_id == after.tracker.run_id]
        assert {round(r.intensity_gco2eq_per_kwh, 6) for r in mine} == {grid}
        assert [(r.attempt, r.epoch, r.partial) for r in mine if r.phase == "train"] == [
            (0, 0, False), (0, 1, True), (1, 1, False), (1, 2, False)]


def test_a_standalone_evaluate_that_raises_after_its_loop_stops_the_meter(tmp_path):
    """Regression: evaluate() raising after its loop (a reporter failing in on_log) never reached
    on_evaluate: the run stayed open, and the idle time until the next call was billed to it as
    an ordinary gap. The evaluate() frame is now watched, as train()'s is."""

    class TrackingServerDown(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "eval_loss" in logs:
                raise ConnectionError("tracking server down")

    callback = make_callback()
    trainer = make_trainer(tmp_path / "out", [callback, TrackingServerDown()])
    with pytest.raises(ConnectionError):
        trainer.evaluate()
    watch.settle()
    assert not callback.session.running
    first_run = callback.tracker.run_id
    summary = json.loads((tmp_path / "out" / "energy-summary.json").read_text())
    assert summary["run_id"] == first_run
    records = read_records(tmp_path / "out")
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert [(r.phase, r.samples) for r in records if r.phase != "other"] == [("validation", EVAL_SAMPLES)]

    trainer.remove_callback(TrackingServerDown)
    trainer.evaluate()
    assert not callback.session.running
    assert read_records(tmp_path / "out")[: len(records)] == records  # its records were complete


def test_dataloader_drop_last_records_the_samples_evaluated(tmp_path):
    """Regression: with ``dataloader_drop_last`` the evaluation and prediction loops drop their
    partial last batch too, but the records took HF's ``num_samples`` (the data set's length)."""
    callback = make_callback()
    trainer = make_trainer(tmp_path / "out", [callback], num_train_epochs=1, eval_strategy="no",
                           dataloader_drop_last=True)
    trainer.train()
    trainer.evaluate()  # 10 samples in batches of 8: one batch
    trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))  # 12: one batch
    records = read_records(tmp_path / "out")
    assert [(r.phase, r.samples) for r in records if r.phase != "other"] == [
        ("train", 24), ("validation", 8), ("predict", 8)]


def test_predict_values_reach_a_reporter_logging_on_predict_once(tmp_path):
    """Regression: W&B (and Trackio, Comet, SwanLab) log predict()'s metrics in their own
    ``on_predict``, ours among them; the callback's ``Trainer.log`` of the same values sent them a
    second time. Reporters that log only in ``on_log`` (TensorBoard, MLflow) still get them once."""

    class LogsPredict(TrainerCallback):  # a reporter in W&B's manner
        def __init__(self):
            self.rows = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.rows.append(dict(logs))

        def on_predict(self, args, state, control, metrics=None, **kwargs):
            self.rows.append(dict(metrics))

    class LogsOnly(TrainerCallback):  # in TensorBoard's
        def __init__(self):
            self.rows = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.rows.append(dict(logs))

    for attach in ("init", "add"):  # "add": a first predict() is measured from its first batch
        reporter, plain, callback = LogsPredict(), LogsOnly(), make_callback()
        trainer = make_trainer(tmp_path / attach, [reporter, plain] + ([callback] if attach == "init" else []))
        if attach == "add":
            trainer.add_callback(callback)
        predicted = trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
        energy = predicted.metrics["test_energy_kwh"]
        for who in (reporter, plain):
            assert [row["test_energy_kwh"] for row in who.rows if "test_energy_kwh" in row] == [energy], (attach, who)
        assert [e["test_energy_kwh"] for e in trainer.state.log_history if "test_energy_kwh" in e] == [energy]


@pytest.mark.parametrize("at_step", [2, 6])
def test_a_crash_records_the_step_it_happened_at(tmp_path, at_step):
    """Regression: the partial record of an epoch cut short carried the step of the previous epoch's
    end (None in epoch 0), not the global step where train() failed."""
    trainer = make_trainer(tmp_path / "out", [make_callback(), Crash(at_step)], num_train_epochs=3, eval_strategy="no")
    with pytest.raises(RuntimeError, match="crash"):
        trainer.train()
    watch.settle()
    partial = [(r.phase, r.epoch, r.step) for r in read_records(tmp_path / "out") if r.partial]
    assert partial == [("train", at_step // 4, at_step)]  # 4 steps an epoch


def test_an_uncaught_crash_records_the_step_it_happened_at_when_the_interpreter_exits(tmp_path):
    """The usual script crash: train() raises and nothing catches it. At exit the adapter's own
    handler (registered after the watch's, so run first) cancelled the watch that held the failing
    TrainerState, and the partial record said step 4, the previous epoch end's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(tests)!r}, {str(tests.parent)!r}]\n"
        "from transformers import Trainer, TrainerCallback\n"
        "from greencallbacks.hf import EnergyCallback\n"
        "from hf_tiny import TokenDataset, tiny_model, training_args\n"
        "class Crash(TrainerCallback):\n"
        "    def on_step_end(self, args, state, control, **kwargs):\n"
        "        if state.global_step == 6:\n"
        "            raise RuntimeError('crash at step 6')\n"
        "args = training_args(sys.argv[1], num_train_epochs=3, eval_strategy='no')\n"
        "Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(30),\n"
        "        callbacks=[EnergyCallback(intensity=400.0), Crash()]).train()\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert "crash at step 6" in done.stderr, done.stderr[-3000:]
    partial = [(r.phase, r.epoch, r.step) for r in read_records(tmp_path) if r.partial]
    assert partial == [("train", 1, 6)]  # 4 steps an epoch


def test_one_callback_in_two_trainers_continues_each_trainers_own_run_in_its_evaluation(tmp_path):
    """Regression: a callback passed to a second Trainer (a notebook cell run again) recorded a later
    ``evaluate()`` of the first into the second's run and output directory, and logged it there.
    Then, with one slot for "the Trainer of the last run", each Trainer's ``evaluate()`` after the
    other's ``train()`` became a run of its own. Each now continues its own Trainer's last run, as
    an ``evaluate()`` after a Trainer's only ``train()`` does (and Lightning's, per Trainer)."""
    callback = make_callback()
    first = make_trainer(tmp_path / "one", [callback], num_train_epochs=2)
    first.train()
    first_run = callback.tracker.run_id
    second = make_trainer(tmp_path / "two", [callback], num_train_epochs=1)
    second.train()
    second_run = callback.tracker.run_id
    in_two = read_records(tmp_path / "two")
    metrics = first.evaluate()
    assert read_records(tmp_path / "two") == in_two
    mine = [r for r in read_records(tmp_path / "one") if r.phase == "validation"]
    # In the first's run, labelled with its own last epoch (1; the second's was 0), totalled with its evaluations.
    assert [(r.run_id, r.epoch) for r in mine] == [(first_run, 0), (first_run, 1), (first_run, 1)]
    assert mine[-1].energy_kwh == metrics["eval_energy_kwh"]
    assert metrics["eval_energy_kwh_total"] == pytest.approx(sum(r.energy_kwh for r in mine), rel=1e-9)
    assert first.state.log_history[-1]["eval_energy_kwh"] == metrics["eval_energy_kwh"]
    assert not any("eval_energy_kwh" in e for e in second.state.log_history[-1:])
    second.evaluate()  # and back to the second's run
    theirs = [(r.run_id, r.epoch) for r in read_records(tmp_path / "two") if r.phase == "validation"]
    assert theirs == [(second_run, 0), (second_run, 0)]
    assert {r.run_id for r in read_records(tmp_path / "one")} == {first_run}
    assert not callback.session.running


def test_a_resume_right_after_the_crash_in_the_same_process_continues_the_run(tmp_path):
    """A script that catches the crash and resumes at once, with a new Trainer and callback: the
    crashed train()'s watch had not yet written its partial records nor let its run go, so the
    resume must wait for it (it read the records too early, or found the run still measured)."""
    from flow_invariants import check_run

    crashed = make_callback()
    trainer = make_trainer(tmp_path / "out", [crashed, Crash(6)], num_train_epochs=3, eval_strategy="no",
                           save_strategy="steps", save_steps=4)
    with pytest.raises(RuntimeError, match="crash"):
        trainer.train()
    resumed = make_callback()  # no settle: at once
    again = make_trainer(tmp_path / "out", [resumed], num_train_epochs=3, eval_strategy="no", save_strategy="steps",
                         save_steps=4)
    again.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert resumed.tracker.run_id == crashed.tracker.run_id
    records = check_run(resumed.tracker.run_id, [tmp_path / "out"])
    assert {r.attempt for r in records} == {0, 1} and any(r.partial for r in records)
