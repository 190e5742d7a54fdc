"""The HF ``Trainer`` adapter, driven by a real Trainer on a tiny BERT with real loggers read back.

A scripted constant-power sensor on the real clock makes energies exact: energy = power x the
real duration of each phase, so power_w, CO2eq and per-sample values can be checked exactly.
"""

from __future__ import annotations

import json
import math
import threading
import warnings

import pytest

transformers = pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks import watch  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.tracker import METRIC_STEMS  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, POWER_W, SEQ_LEN, TEST_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tensorboard_dir,
    tiny_model, training_args,
)

pytestmark = pytest.mark.slow

INTENSITY, PUE = 400.0, 1.5


def make_callback(**kwargs) -> EnergyCallback:
    return EnergyCallback(intensity=INTENSITY, pue=PUE, sensors=[scripted_sensor()], **kwargs)


def make_trainer(tmp_path, callback, attach="init", train=None, **overrides):
    trainer = Trainer(
        model=tiny_model(),
        args=training_args(tmp_path / "out", **overrides),
        train_dataset=train or TokenDataset(TRAIN_SAMPLES),
        eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
        callbacks=(callback if isinstance(callback, list) else [callback]) if attach == "init" else None,
    )
    if attach == "add":
        trainer.add_callback(callback)
    return trainer


def energy_entries(history, prefix=""):
    return [e for e in history if f"{prefix}energy_kwh" in e]


def assert_consistent(entry, prefix, samples):
    """The stems are all there, positive, and agree with a constant 50 W scripted sensor."""
    for stem in METRIC_STEMS:
        assert entry[prefix + stem] > 0, (prefix + stem, entry)
    energy_j = entry[prefix + "energy_kwh"] * 3.6e6
    # IT power, before PUE. At each boundary the meter reads the clock, then the sensor reads it
    # again: a thread that takes the GIL in between (its switch interval is 5 ms) or the OS
    # preempting a loaded 2-core machine puts milliseconds between the two (CI once saw 72 W for
    # a 9 ms predict). That matters only for phases of a few ms: allow 10 ms per boundary of the
    # phase's duration, and 2 % for longer phases.
    duration_s = energy_j / PUE / entry[prefix + "power_w"]
    assert entry[prefix + "power_w"] == pytest.approx(POWER_W, rel=max(0.02, 0.02 / duration_s))
    assert entry[prefix + "co2eq_g"] == pytest.approx(entry[prefix + "energy_kwh"] * INTENSITY, rel=1e-9)
    assert entry[prefix + "energy_j_per_sample"] == pytest.approx(energy_j / samples, rel=1e-9)
    assert entry[prefix + "co2eq_g_per_sample"] == pytest.approx(entry[prefix + "co2eq_g"] / samples, rel=1e-9)


@pytest.mark.parametrize(
    "attach, logging_strategy, extra",
    [
        ("init", "epoch", {}),
        ("add", "steps", {"logging_steps": 1, "gradient_accumulation_steps": 2}),
        ("add", "no", {}),
    ],
)
def test_epoch_values_reach_tensorboard_and_log_history(tmp_path, monkeypatch, attach, logging_strategy, extra):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = make_callback()
    trainer = make_trainer(
        tmp_path, callback, attach, report_to=["tensorboard"], logging_strategy=logging_strategy,
        **tensorboard_dir(monkeypatch, tmp_path / "tb"), **extra,
    )
    trainer.train()
    history = trainer.state.log_history

    train = energy_entries(history)
    assert [e["epoch"] for e in train] == [1.0, 2.0]
    for entry in train:
        assert_consistent(entry, "", TRAIN_SAMPLES)  # 30 samples: 3 full batches and a partial one
    records = read_records(tmp_path / "out")
    train_records = [r for r in records if r.phase == "train"]
    assert [(r.epoch, r.samples) for r in train_records] == [(0, TRAIN_SAMPLES), (1, TRAIN_SAMPLES)]
    # The version, as Lightning's and Keras's records say theirs: the report groups runs by it.
    assert {r.framework for r in records} == {f"transformers {transformers.__version__}"}
    assert [e["energy_kwh"] for e in train] == [r.energy_kwh for r in train_records]
    # The running total covers every record up to the end of that epoch (gaps and validation too).
    for entry, record in zip(train, train_records):
        upto = [r for r in records if r.seq <= record.seq]
        assert entry["energy_kwh_total"] == pytest.approx(sum(r.energy_kwh for r in upto), rel=1e-9)

    evals = energy_entries(history, "eval_")
    assert len(evals) == 2 and all("eval_loss" in e for e in evals)  # joined HF's own eval log
    for entry in evals:
        assert_consistent(entry, "eval_", EVAL_SAMPLES)
    assert [r.samples for r in records if r.phase == "validation"] == [EVAL_SAMPLES, EVAL_SAMPLES]

    # The Trainer's own logging is untouched: its loss log at epoch end still happens.
    # (steps: 4 batches per epoch accumulated in pairs make 2 optimizer steps per epoch, each logged)
    losses = [e for e in history if "loss" in e]
    assert len(losses) == {"epoch": 2, "steps": 4, "no": 0}[logging_strategy]

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for stem in METRIC_STEMS:
        assert f"train/{stem}" in scalars and f"eval/{stem}" in scalars
    logged = [(s.step, s.value) for s in events.Scalars("train/energy_kwh")]
    assert [step for step, _ in logged] == [e["step"] for e in train]
    assert [value for _, value in logged] == pytest.approx([e["energy_kwh"] for e in train], rel=1e-6)
    assert [s.value for s in events.Scalars("eval/energy_j_per_sample")] == pytest.approx(
        [e["eval_energy_j_per_sample"] for e in evals], rel=1e-6
    )


def test_values_reach_mlflow_and_wandb(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    from tests.wandb_offline import read_history_with, run_files

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.x: the file store is opt-in
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # An earlier test in this process (Lightning's loggers) leaves MLflow's URI and W&B's global
    # settings behind: HF's reporters would write there, not under tmp_path.
    import wandb

    mlflow.end_run()
    mlflow.set_tracking_uri(uri)
    wandb.teardown()
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, "add", report_to=["mlflow", "wandb"])
    trainer.train()
    wandb.finish()
    mlflow.end_run()
    train = energy_entries(trainer.state.log_history)
    evals = energy_entries(trainer.state.log_history, "eval_")

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    for stem in METRIC_STEMS:
        history = client.get_metric_history(run.info.run_id, stem)
        assert [m.value for m in history] == pytest.approx([e[stem] for e in train], rel=1e-9)
        assert [m.step for m in history] == [e["step"] for e in train]
        assert len(client.get_metric_history(run.info.run_id, f"eval_{stem}")) == 2

    (run_file,) = run_files(tmp_path)
    rows = read_history_with(run_file, "train/energy_kwh", len(train))
    logged = [row["train/energy_kwh"] for row in rows if "train/energy_kwh" in row]
    assert logged == pytest.approx([e["energy_kwh"] for e in train], rel=1e-9)
    logged_eval = [row["eval/co2eq_g_per_sample"] for row in rows if "eval/co2eq_g_per_sample" in row]
    assert logged_eval == pytest.approx([e["eval_co2eq_g_per_sample"] for e in evals], rel=1e-9)


@pytest.mark.parametrize("attach", ["init", "add"])
def test_evaluate_and_predict_alone_report_per_sample_cost(tmp_path, attach):
    """Without training: with ``add_callback`` the first loop is caught at its first batch, later ones exactly."""
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, attach)

    evaluated = trainer.evaluate()
    assert_consistent(evaluated, "eval_", EVAL_SAMPLES)
    assert trainer.state.log_history[-1]["eval_energy_kwh"] == evaluated["eval_energy_kwh"]  # logged, too

    predicted = trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    assert_consistent(predicted.metrics, "test_", TEST_SAMPLES)  # HF's prefix for predict()
    assert trainer.state.log_history[-1]["test_energy_kwh"] == predicted.metrics["test_energy_kwh"]

    held_out = trainer.evaluate(TokenDataset(EVAL_SAMPLES, seed=3), metric_key_prefix="holdout")
    assert_consistent(held_out, "holdout_", EVAL_SAMPLES)
    # Each metric prefix totals its own loops: the hold-out set's first, not the eval set's with it.
    assert held_out["holdout_energy_kwh_total"] == held_out["holdout_energy_kwh"]

    records = read_records(tmp_path / "out")
    measured = [(r.phase, r.samples, r.partial) for r in records if r.phase != "other"]
    assert measured == [
        ("validation", EVAL_SAMPLES, False), ("predict", TEST_SAMPLES, False), ("validation", EVAL_SAMPLES, False)
    ]
    assert not callback.session.running  # each standalone loop is a run of its own: its thread is stopped


def test_predict_after_training_and_tokens(tmp_path):
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, include_num_input_tokens_seen="all")
    trainer.train()
    assert not callback.session.running
    for entry in energy_entries(trainer.state.log_history):
        assert entry["energy_j_per_token"] == pytest.approx(
            entry["energy_kwh"] * 3.6e6 / (TRAIN_SAMPLES * SEQ_LEN), rel=1e-9
        )
    predicted = trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    assert_consistent(predicted.metrics, "test_", TEST_SAMPLES)
    records = read_records(tmp_path / "out")
    assert [r.tokens for r in records if r.phase == "train"] == [TRAIN_SAMPLES * SEQ_LEN] * 2
    assert records[-2].phase == "predict" and records[-2].epoch == 1


def test_evaluation_inside_an_epoch_is_excluded_from_its_training_record(tmp_path):
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, eval_strategy="steps", eval_steps=2)
    trainer.train()
    records = read_records(tmp_path / "out")
    validations = [r for r in records if r.phase == "validation"]
    assert [r.epoch for r in validations] == [0, 0, 1, 1]
    train = [r for r in records if r.phase == "train"]
    assert [r.samples for r in train] == [TRAIN_SAMPLES, TRAIN_SAMPLES]  # evaluation samples are not training's
    # The records partition the run: at constant power, energy follows their summed durations
    # (inner boundaries cancel; the first and last may each put ms between clock and sensor, see
    # assert_consistent).
    assert sum(r.energy_kwh for r in records) == pytest.approx(callback.tracker.total_energy_j / 3.6e6, rel=1e-9)
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(
        POWER_W * sum(r.duration_s for r in records), rel=1e-3, abs=POWER_W * 0.02
    )


@pytest.mark.parametrize("restore_callback_states", [False, True])
def test_resume_from_checkpoint_continues_the_totals_once(tmp_path, restore_callback_states):
    first = make_callback()
    make_trainer(tmp_path, first, save_strategy="epoch").train()
    run_id = first.tracker.run_id

    second = make_callback()  # a new process would build a new callback
    trainer = make_trainer(
        tmp_path, second, num_train_epochs=4, save_strategy="epoch",
        restore_callback_states_from_checkpoint=restore_callback_states,
    )
    trainer.train(resume_from_checkpoint=True)

    # HF may swap the callback for a copy built from state(); the user's instance is back in place.
    assert [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EnergyCallback)] == [second]
    records = read_records(tmp_path / "out")
    train = [r for r in records if r.phase == "train"]
    assert [r.epoch for r in train] == [0, 1, 2, 3]
    assert {r.run_id for r in records} == {run_id}
    totals = second.tracker.totals["train"]
    assert totals.count == 4
    assert totals.energy_j == pytest.approx(sum(r.energy_kwh for r in train) * 3.6e6, rel=1e-9)
    logged = energy_entries(trainer.state.log_history)
    assert [e["epoch"] for e in logged][-2:] == [3.0, 4.0]
    # Every joule of both attempts once: the first attempt's records (its evaluation, checkpoint
    # and final gap after the checkpoint included) and the resumed one's. The last running total
    # is what the records added up to at the end of epoch 3.
    assert {r.attempt for r in records if r.phase == "train" and r.epoch >= 2} == {1}
    last_train = max(i for i, r in enumerate(records) if r.phase == "train")
    expected_j = sum(r.energy_kwh for r in records[: last_train + 1]) * 3.6e6
    assert logged[-1]["energy_kwh_total"] * 3.6e6 == pytest.approx(expected_j, rel=1e-9)
    summary = json.loads((tmp_path / "out" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)


class _SeeThread(TrainerCallback):
    def __init__(self):
        self.alive_during_training = None

    def on_step_end(self, args, state, control, **kwargs):
        self.alive_during_training = any(t.name == "greencallbacks-meter" for t in threading.enumerate())


def test_several_evaluation_sets_each_total_their_own_loops_across_a_resume(tmp_path):
    """``eval_dataset={"a": ..., "b": ...}`` logs ``eval_a_*`` and ``eval_b_*``; each ``_total``
    was every evaluation of the run, both sets together. Now each prefix totals its own loops,
    from the records (``metric_prefix``), so a resume from a checkpoint goes on from them."""
    sets = {"a": TokenDataset(EVAL_SAMPLES, seed=1), "b": TokenDataset(6, seed=2)}

    def trainer_for(callback, epochs):
        return Trainer(model=tiny_model(), args=training_args(tmp_path / "out", num_train_epochs=epochs, save_strategy="epoch"),
                       train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=sets, callbacks=[callback])

    trainer_for(make_callback(), 2).train()  # checkpoints at steps 4 and 8
    resumed = trainer_for(make_callback(), 3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))  # epochs 1 and 2 again
    records = read_records(tmp_path / "out")
    assert len({r.run_id for r in records}) == 1
    for name, size in (("a", EVAL_SAMPLES), ("b", 6)):
        mine = [r for r in records if r.metric_prefix == f"eval_{name}"]
        assert [(r.attempt, r.epoch, r.samples) for r in mine] == [(0, 0, size), (0, 1, size), (1, 1, size), (1, 2, size)]
        logged = [e[f"eval_{name}_energy_kwh_total"] for e in resumed.state.log_history if f"eval_{name}_energy_kwh_total" in e]
        assert logged[-1] == pytest.approx(sum(r.energy_kwh for r in mine), rel=1e-9)
    validation = [r for r in records if r.phase == "validation"]
    assert {r.metric_prefix for r in validation} == {"eval_a", "eval_b"}


def test_exception_mid_training_writes_the_unfinished_epoch_and_stops_the_thread(tmp_path):
    sensor = scripted_sensor()
    sensor.poll_interval_s = 0.05  # a sampled sensor: the meter runs its background thread
    callback = EnergyCallback(intensity=INTENSITY, pue=PUE, sensors=[sensor])
    probe = _SeeThread()
    # Epoch 0 reads 30 items; the data source breaks 20 items into epoch 1.
    trainer = make_trainer(tmp_path, callback, train=TokenDataset(TRAIN_SAMPLES, fail_after=TRAIN_SAMPLES + 20))
    trainer.add_callback(probe)
    with pytest.raises(RuntimeError, match="broken data source"):
        trainer.train()
    assert probe.alive_during_training
    watch.settle()  # the watch thread writes a train() that raised up within ~0.2 s
    assert not any(t.name == "greencallbacks-meter" for t in threading.enumerate())
    assert not callback.session.running
    records = read_records(tmp_path / "out")
    train = [r for r in records if r.phase == "train"]
    assert [(r.epoch, r.partial) for r in train] == [(0, False), (1, True)]
    # 20 items into epoch 1: two full batches can be read, and Accelerate's loader fetches one
    # batch ahead, so one or two batches were trained before the failure.
    assert train[1].samples in (8, 16)
    assert train[1].energy_kwh > 0

    # Training again with the same callback starts a fresh, complete run.
    trainer.train_dataset = TokenDataset(TRAIN_SAMPLES)
    trainer.train()
    assert [r.partial for r in read_records(tmp_path / "out") if r.phase == "train"][-2:] == [False, False]


def test_auto_find_batch_size_retry_after_out_of_memory_trains_on_and_bills_both_tries(tmp_path, monkeypatch):
    """Regression: with ``auto_find_batch_size`` an out-of-memory error makes Accelerate rerun the
    training loop at once, after a ``gc.collect()`` long enough for the watch to notice the loop
    left the stack and start writing it up on its thread. The rerun builds a ``TrainerState``,
    which calls ``state()``: it read the session while the watch thread was stopping it and
    raised (IndexError), breaking training. Here the watch's write-up is made to run inside that
    read, where it ran by chance before; the fix finishes the write-up before the read."""
    from greencallbacks.tracker import Tracker

    class OutOfMemoryOnce(TrainerCallback):
        raised = False

        def on_step_end(self, args, state, control, **kwargs):
            if not OutOfMemoryOnce.raised:
                OutOfMemoryOnce.raised = True
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")  # Accelerate's words

    boundary, injected = Tracker._boundary, []

    def watch_writes_up_meanwhile(tracker, *args, **kwargs):
        if OutOfMemoryOnce.raised and not injected and threading.current_thread() is threading.main_thread():
            injected.append(True)
            watch.settle()  # the watch thread writes the failed loop up now, if it is still open
        return boundary(tracker, *args, **kwargs)

    monkeypatch.setattr(Tracker, "_boundary", watch_writes_up_meanwhile)
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, auto_find_batch_size=True)
    trainer.add_callback(OutOfMemoryOnce())
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyWarning)  # nothing of ours may fail, even quietly
        output = trainer.train()
    assert output.global_step > 0 and injected
    # The failed try is a run of its own, cut short after its one batch; the retry is a complete run.
    records = read_records(tmp_path / "out")
    failed, retried = list(dict.fromkeys(r.run_id for r in records))
    assert [(r.epoch, r.samples, r.partial) for r in records if r.run_id == failed and r.phase == "train"] == [(0, 8, True)]
    assert [(r.epoch, r.samples, r.partial) for r in records if r.run_id == retried and r.phase == "train"] == [
        (0, TRAIN_SAMPLES, False), (1, TRAIN_SAMPLES, False)]
    assert callback.tracker.run_id == retried and not callback.session.running
    summary = json.loads((tmp_path / "out" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records if r.run_id == retried), rel=1e-9)


def test_a_data_set_without_a_length_numbers_its_passes_and_predicts_at_max_steps(tmp_path):
    """Regression, streaming data (an IterableDataset with ``max_steps``): HF plans sys.maxsize
    passes and counts ``state.epoch`` to 1.0 over max_steps, so the second pass began at 0.4 and
    was recorded as epoch 0 again, and the prediction priced 9e18 epochs (3e12 kWh logged by
    every reporter, enough to trip a budget). Passes are now epochs 0, 1, 2, ..., and the
    prediction prices the steps left to max_steps (half a pass here) at the steps a pass takes."""
    import torch

    class Stream(torch.utils.data.IterableDataset):
        def __init__(self, n, seed=0):
            self.items = TokenDataset(n, seed)

        def __iter__(self):
            return (self.items[i] for i in range(len(self.items)))

    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, train=Stream(TRAIN_SAMPLES), max_steps=22,
                           eval_strategy="steps", eval_steps=10)
    trainer.train()
    records = read_records(tmp_path / "out")
    # 30 samples in batches of 8 is a pass of 4 steps: 22 steps are five passes and half a sixth.
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == [(e, 30) for e in range(5)] + [(5, 16)]
    # At steps 10 and 20; transformers 5 also evaluates at the last step, 22.
    assert [r.epoch for r in records if r.phase == "validation"] in ([2, 4], [2, 4, 5])
    entries = energy_entries(trainer.state.log_history)
    assert len(entries) == 6
    # Known from epoch 3 (two complete passes after the first); at the last pass's end, the
    # total so far and a pass's mean tail, where the final evaluation and save are still to come
    # (0.996-0.999 of the total in three runs).
    predicted = [e.get("energy_kwh_predicted") for e in entries]
    assert predicted[:3] == [None] * 3 and all(p is not None for p in predicted[3:])
    total = json.loads((tmp_path / "out" / "energy-summary.json").read_text())["energy_kwh"]
    assert 0.9 <= predicted[-1] / total < 1.3, (predicted, total)


def test_without_the_loop_seam_every_evaluation_and_prediction_is_still_measured(tmp_path, monkeypatch):
    """The loops are wrapped by name (``evaluation_loop``; ``prediction_loop`` before transformers 5).
    A release that renamed them left every evaluation unmeasured, silently: ``on_prediction_step``
    deferred to a wrapper that did not exist. Now each loop is measured from its first batch (the
    path of a loop begun before ``add_callback``), with one warning."""
    import greencallbacks.hf as hf

    monkeypatch.setattr(hf._callback, "_LOOPS", ("a_loop_a_future_release_renamed",))
    callback = make_callback()
    with pytest.warns(EnergyWarning, match="no Trainer.a_loop_a_future_release_renamed") as caught:
        trainer = make_trainer(tmp_path, callback)  # the callback finds the Trainer (and wraps it) here
        trainer.train()
        metrics = trainer.evaluate()
        trainer.predict(TokenDataset(TEST_SAMPLES, seed=2))
    assert len([w for w in caught if "a_loop_a_future_release_renamed" in str(w.message)]) == 1
    records = read_records(tmp_path / "out")
    assert [(r.phase, r.epoch, r.samples) for r in records if r.phase != "other"] == [
        ("train", 0, TRAIN_SAMPLES), ("validation", 0, EVAL_SAMPLES), ("train", 1, TRAIN_SAMPLES),
        ("validation", 1, EVAL_SAMPLES), ("validation", 1, EVAL_SAMPLES), ("predict", 1, TEST_SAMPLES)]
    evaluations = [e for e in trainer.state.log_history if "eval_energy_kwh" in e]
    assert [e["eval_energy_kwh"] for e in evaluations] == [r.energy_kwh for r in records if r.phase == "validation"]
    assert metrics["eval_energy_kwh_total"] == pytest.approx(sum(r.energy_kwh for r in records if r.phase == "validation"), rel=1e-9)


def test_a_failing_callback_warns_and_training_goes_on(tmp_path, monkeypatch):
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(callback.tracker, "end", broken)
    with pytest.warns(EnergyWarning, match="on_epoch_end failed"):
        output = trainer.train()
    assert output.global_step == 8
    assert math.isfinite(output.training_loss)


def test_a_failing_step_hook_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    """on_step_end guards itself (no @never_raises frame at every step): the same single warning."""
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, logging_steps=1, logging_strategy="steps")

    def broken(*args, **kwargs):
        raise RuntimeError("live values exploded")

    monkeypatch.setattr(callback.session, "live_metrics", broken)
    with pytest.warns(EnergyWarning, match=r"on_step_end failed.*live values exploded") as caught:
        output = trainer.train()
    assert len([w for w in caught if "failed" in str(w.message)]) == 1  # once, though every step logged
    assert output.global_step == 8
    assert [r.epoch for r in read_records(tmp_path / "out") if r.phase == "train"] == [0, 1]


@pytest.mark.parametrize("attach", ["init", "add"])
def test_two_callbacks_in_one_trainer_say_their_metric_names_collide(tmp_path, attach):
    """Each measures everything into its own records, but HF merges a loop's metrics into one
    dict, so one callback's eval values overwrite the other's: one warning says so."""
    first, second = make_callback(output_dir=tmp_path / "a"), make_callback(output_dir=tmp_path / "b")
    with pytest.warns(EnergyWarning, match="two EnergyCallbacks in one Trainer log the same metric names") as caught:
        trainer = make_trainer(tmp_path, [first, second] if attach == "init" else first)
        if attach == "add":
            trainer.add_callback(second)
        trainer.train()
    assert len([w for w in caught if "two EnergyCallbacks" in str(w.message)]) == 1
    for callback in (first, second):
        assert [r.samples for r in read_records(callback.tracker.output_dir) if r.phase == "train"] == [TRAIN_SAMPLES] * 2


def test_bad_configuration_fails_before_training():
    with pytest.raises(ValueError, match="pue"):
        EnergyCallback(pue=0.5)


def test_a_padding_free_collator_counts_the_sequences_it_packs_into_one_row(tmp_path):
    # DataCollatorWithFlattening gives each batch as one row, input_ids (1, tokens), with
    # position_ids starting again at each sequence: the records count sequences, not rows.
    import torch
    from transformers import DataCollatorWithFlattening, GPT2Config, GPT2LMHeadModel

    generator = torch.Generator().manual_seed(0)

    def sequences(n):
        return [{"input_ids": torch.randint(1, 64, (int(k),), generator=generator).tolist()}
                for k in torch.randint(1, SEQ_LEN + 1, (n,), generator=generator)]

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=SEQ_LEN, n_embd=16, n_layer=1, n_head=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(
            model=model, args=training_args(tmp_path / "out", remove_unused_columns=False),
            train_dataset=sequences(TRAIN_SAMPLES), eval_dataset=sequences(EVAL_SAMPLES),
            data_collator=DataCollatorWithFlattening(), callbacks=[make_callback()],
        )
        trainer.train()
    records = read_records(tmp_path / "out")
    assert [r.samples for r in records if r.phase == "train"] == [TRAIN_SAMPLES, TRAIN_SAMPLES]
    assert [r.samples for r in records if r.phase == "validation"] == [EVAL_SAMPLES, EVAL_SAMPLES]
    assert all(r.samples_counted for r in records)
    assert not [w for w in caught if issubclass(w.category, EnergyWarning) and "count" in str(w.message)]


class _Stream:
    """A torch IterableDataset (no length) over ``items``."""

    def __new__(cls, items):
        import torch

        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self):
                return iter(items)

        return Stream()


def _tiny_causal_lm():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=2 * SEQ_LEN, n_embd=16, n_layer=1, n_head=2))


def test_evaluation_over_a_data_set_without_a_length_counts_its_batches_not_hfs_observed_count(tmp_path):
    """Regression: without a length, HF's ``num_samples`` is the sum of each batch's first tensor's
    leading dimension, which replaced the batches' own count: 2 for 10 sequences and 1 for 7 with
    DataCollatorWithFlattening (one row per batch), the tokens of a collate that packs them beside
    per-sample labels (38 and 27, counted). Now the sequences, or uncounted."""
    import torch
    from transformers import DataCollatorWithFlattening

    generator = torch.Generator().manual_seed(0)
    sequences = [{"input_ids": torch.randint(1, 64, (int(k),), generator=generator).tolist()}
                 for k in torch.randint(2, SEQ_LEN + 1, (10,), generator=generator)]
    trainer = Trainer(model=_tiny_causal_lm(), args=training_args(tmp_path / "flat", remove_unused_columns=False,
                                                                  eval_strategy="no", max_steps=1),
                      train_dataset=sequences, data_collator=DataCollatorWithFlattening(), callbacks=[make_callback()])
    trainer.train()
    trainer.evaluate(_Stream(sequences))  # batches of 8: two packed rows
    trainer.predict(_Stream(sequences[:7]))  # one packed row
    records = [r for r in read_records(tmp_path / "flat") if r.phase in ("validation", "predict")]
    assert [(r.phase, r.samples, r.samples_counted) for r in records] == [("validation", 10, True), ("predict", 7, True)]

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, feats, lengths, labels=None):
            logits = self.linear(torch.stack([part.mean(0) for part in torch.split(feats, lengths.tolist())]))
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    def pack(samples):  # the samples' rows end to end, beside their lengths and labels
        return {"feats": torch.cat([s["feats"] for s in samples]), "lengths": torch.tensor([len(s["feats"]) for s in samples]),
                "labels": torch.tensor([s["labels"] for s in samples])}

    items = [{"feats": torch.randn(int(k), 4, generator=generator), "labels": i % 2}
             for i, k in enumerate(torch.randint(2, 6, (10,), generator=generator))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EnergyWarning)  # the packed rows cannot be counted: said once
        trainer = Trainer(model=Pooled(), args=training_args(tmp_path / "packed", remove_unused_columns=False,
                                                             eval_strategy="no", max_steps=1, per_device_eval_batch_size=4),
                          train_dataset=items, data_collator=pack, callbacks=[make_callback()])
        trainer.evaluate(items)  # a length: HF's count, right
        trainer.evaluate(_Stream(items))
    records = read_records(tmp_path / "packed")
    assert [(r.samples, r.samples_counted) for r in records if r.phase == "validation"] == [(10, True), (0, False)]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_pre_packed_rows_count_as_rows_at_every_batch_size(tmp_path, batch_size):
    """Regression: a data set of pre-packed rows (two documents each, position_ids restarting) with
    default_data_collator counted a batch of one row as its documents, batches of two as rows:
    6 (2 + 2 + 2) at batch size 2, 10 at batch size 1, for 5 rows. Only a padding-free collator's
    row counts its sequences: these count 5."""
    import torch
    from transformers import default_data_collator

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(5):
        ids = torch.randint(1, 64, (2 * SEQ_LEN,), generator=generator)
        rows.append({"input_ids": ids, "labels": ids.clone(),
                     "position_ids": torch.cat([torch.arange(SEQ_LEN), torch.arange(SEQ_LEN)])})
    trainer = Trainer(model=_tiny_causal_lm(),
                      args=training_args(tmp_path / "out", num_train_epochs=1, per_device_train_batch_size=batch_size,
                                         per_device_eval_batch_size=batch_size),
                      train_dataset=rows, eval_dataset=_Stream(rows), data_collator=default_data_collator,
                      callbacks=[make_callback()])
    trainer.train()
    records = read_records(tmp_path / "out")
    assert [(r.phase, r.samples, r.samples_counted) for r in records if r.phase != "other"] == [
        ("train", 5, True), ("validation", 5, True)]


@pytest.mark.parametrize("case", ["no length", "drop last"])
def test_a_loop_begun_before_the_callback_saw_the_trainer_counts_right(tmp_path, case):
    """Regression: after add_callback, the first evaluate() (begun at its first on_prediction_step)
    took the data set's length, or the batches after the first: 12 for 20 over an IterableDataset
    (the first batch ran before the wrapper), 20 for 16 with dataloader_drop_last."""
    data = TokenDataset(20, seed=1)
    dataset = _Stream([data[i] for i in range(20)]) if case == "no length" else data
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, attach="add", eval_strategy="no",
                           dataloader_drop_last=case == "drop last")
    trainer.evaluate(dataset)
    trainer.evaluate(dataset)
    expected = 20 if case == "no length" else 16
    records = [r for r in read_records(tmp_path / "out") if r.phase == "validation"]
    assert [(r.samples, r.samples_counted) for r in records] == [(expected, True)] * 2


class _EvaluatesInsideALoop(TrainerCallback):
    """At the first batch of each outer loop, runs evaluate() on another data set (a loop inside a loop)."""

    def __init__(self):
        self.trainer, self.busy, self.steps = None, False, set()

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.busy or state.global_step in self.steps:
            return
        self.steps.add(state.global_step)
        self.busy = True
        try:
            self.trainer.evaluate(TokenDataset(7, seed=5), metric_key_prefix="extra")
        finally:
            self.busy = False


@pytest.mark.parametrize("inner", ["predict in compute_metrics", "evaluate in on_prediction_step", "standalone, add_callback"])
def test_a_loop_run_inside_another_loop_is_measured_and_the_outer_one_closes(tmp_path, inner):
    """Regression: the callback had one slot for the open loop. A predict() in compute_metrics (which
    HF calls inside its evaluation loop), or an evaluate() from a callback's on_prediction_step,
    overwrote it and cleared it on its end: the outer loop warned "could not measure eval
    (TypeError(...))", logged no eval_* values, and its record stayed open (partial) until training
    ended. Now loops nest: each closes its own record and logs its own values."""
    holder = {}

    def compute_metrics(prediction):
        if holder.get("busy"):
            return {}
        holder["busy"] = True
        try:
            holder["trainer"].predict(TokenDataset(7, seed=5), metric_key_prefix="probe")
        finally:
            holder["busy"] = False
        return {}

    callback = make_callback()
    nested = _EvaluatesInsideALoop()
    training = inner != "standalone, add_callback"
    trainer = Trainer(
        model=tiny_model(), args=training_args(tmp_path / "out"), train_dataset=TokenDataset(TRAIN_SAMPLES),
        eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
        callbacks=([callback] if training else []) + ([nested] if inner.startswith("evaluate") else []),
        compute_metrics=None if inner.startswith("evaluate") else compute_metrics,
    )
    holder["trainer"] = nested.trainer = trainer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if training:
            trainer.train()
        else:  # the outer loop begins at its first on_prediction_step; the inner one is wrapped
            trainer.add_callback(callback)
            evaluated = trainer.evaluate()
            assert_consistent(evaluated, "eval_", EVAL_SAMPLES)
    assert not [w for w in caught if issubclass(w.category, EnergyWarning) and "could not" in str(w.message)]
    assert not callback.session.running

    inner_prefix = "extra" if inner.startswith("evaluate") else "probe"
    records = read_records(tmp_path / "out")
    loops = [(r.metric_prefix, r.samples, r.partial) for r in records if r.phase in ("validation", "predict")]
    epochs = 2 if training else 1
    assert loops == [(inner_prefix, 7, False), ("eval", EVAL_SAMPLES, False)] * epochs  # the inner loop ends first
    outer = [r for r in records if r.metric_prefix == "eval"]
    logged = [e for e in trainer.state.log_history if "eval_energy_kwh" in e]
    assert [e["eval_energy_kwh"] for e in logged] == pytest.approx([r.energy_kwh for r in outer], rel=1e-9)
    assert logged[-1]["eval_energy_kwh_total"] == pytest.approx(sum(r.energy_kwh for r in outer), rel=1e-9)
    assert len([e for e in trainer.state.log_history if f"{inner_prefix}_energy_kwh" in e]) == epochs
    summary = json.loads((tmp_path / "out" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    if training:  # the outer evaluation's end opened the gap after it, as without a loop inside
        assert [r.phase for r in records if r.epoch == 0][-1] == "other"


def test_a_metric_prefix_of_evaluate_and_predict_totals_every_loop_logged_under_it(tmp_path):
    """Regression: ``evaluate(ds, metric_key_prefix="test")`` then ``predict(ds)`` (whose default
    prefix is test) logged test_energy_kwh_total by phase and prefix: it went down at predict() (to
    predict's own) and up at the next evaluate() (without predict's). Now each logged ``_total`` is
    the running total of every record logged under its name, whatever the phase; a standalone
    evaluate() after training continues the eval total, and a predict() under eval joins it."""
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, num_train_epochs=1)
    trainer.train()
    test = TokenDataset(TEST_SAMPLES, seed=4)
    totals = [trainer.evaluate(test, metric_key_prefix="test")["test_energy_kwh_total"],
              trainer.predict(test).metrics["test_energy_kwh_total"],
              trainer.evaluate(test, metric_key_prefix="test")["test_energy_kwh_total"]]
    eval_totals = [trainer.evaluate()["eval_energy_kwh_total"],
                   trainer.predict(test, metric_key_prefix="eval").metrics["eval_energy_kwh_total"]]
    records = read_records(tmp_path / "out")
    test_records = [r for r in records if r.metric_prefix == "test"]
    assert [r.phase for r in test_records] == ["validation", "predict", "validation"]
    assert totals == pytest.approx([sum(r.energy_kwh for r in test_records[: i + 1]) for i in range(3)], rel=1e-9)
    eval_records = [r for r in records if r.metric_prefix == "eval"]
    assert [r.phase for r in eval_records] == ["validation", "validation", "predict"]  # training's, then the two alone
    assert eval_totals == pytest.approx([sum(r.energy_kwh for r in eval_records[:i]) for i in (2, 3)], rel=1e-9)
    logged = [e["test_energy_kwh_total"] for e in trainer.state.log_history if "test_energy_kwh_total" in e]
    assert logged == pytest.approx(totals, rel=1e-9)


def test_an_empty_metric_prefix_logs_under_hfs_names_not_the_training_ones(tmp_path):
    """Regression: ``evaluate(metric_key_prefix="")`` (HF then names its metrics ``_loss``,
    ``_runtime``) logged ours as energy_kwh, energy_kwh_total...: the training's names, so the run's
    logged total fell from the training's to this evaluation's alone. Ours follow HF's: ``_energy_kwh``."""
    callback = make_callback()
    trainer = make_trainer(tmp_path, callback, num_train_epochs=1)
    trainer.train()
    training_total = [e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e]
    evaluated = trainer.evaluate(metric_key_prefix="")
    assert_consistent(evaluated, "_", EVAL_SAMPLES)
    assert not any(key in evaluated for key in ("energy_kwh", "energy_kwh_total"))
    assert [e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e] == training_total
    empty = [r for r in read_records(tmp_path / "out") if r.metric_prefix == ""]
    assert evaluated["_energy_kwh_total"] == pytest.approx(sum(r.energy_kwh for r in empty), rel=1e-9)


@pytest.mark.parametrize("attach", ["init", "add"])
def test_a_loop_over_a_sampled_subset_records_the_samples_it_ran(tmp_path, attach):
    """Regression: a Trainer whose evaluation and test loaders sample a subset (SubsetRandomSampler
    over 4 and 3 samples of 10 and 12) recorded HF's num_samples, the data sets' lengths: 10 and 12
    samples, a per-sample cost 2.5-4x too low. A loop whose every batch was counted records that
    count; the data set's length only stands in where the batches hold each of its samples once."""
    from torch.utils.data import DataLoader, SubsetRandomSampler

    class SubsetTrainer(Trainer):
        def get_eval_dataloader(self, eval_dataset=None):
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            return DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size,
                              sampler=SubsetRandomSampler(range(4)), collate_fn=self.data_collator)

        def get_test_dataloader(self, test_dataset):
            return DataLoader(test_dataset, batch_size=self.args.per_device_eval_batch_size,
                              sampler=SubsetRandomSampler(range(3)), collate_fn=self.data_collator)

    callback = make_callback()
    trainer = SubsetTrainer(model=tiny_model(), args=training_args(tmp_path / "out", eval_strategy="no"),
                            train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                            callbacks=[callback] if attach == "init" else None)
    if attach == "add":
        trainer.add_callback(callback)  # the first loop is begun at its first batch
    evaluated = trainer.evaluate()
    predicted = trainer.predict(TokenDataset(TEST_SAMPLES, seed=4))
    assert len(predicted.predictions) == 3
    assert_consistent(evaluated, "eval_", 4)
    assert_consistent(predicted.metrics, "test_", 3)
    records = read_records(tmp_path / "out")
    assert [(r.phase, r.samples, r.samples_counted) for r in records if r.phase != "other"] == [
        ("validation", 4, True), ("predict", 3, True)]
