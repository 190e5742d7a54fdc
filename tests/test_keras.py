"""The Keras 3 adapter, on the torch, tensorflow and jax backends, with real ``model.fit`` runs.

Keras fixes its backend at first import, so each backend runs ``keras_backend_runner.py`` once
in its own process (all scenarios, ~10 s each); the tests here read what it wrote back with the
loggers' own formats (CSV, TensorBoard event files, the records JSONL) and assert. This file
never imports Keras itself. A backend that is not installed is skipped, saying so.

Most scenarios use a scripted 100 W sensor on the real clock, so each record's energy must be
100 W x its measured duration x PUE exactly; the crash and resume scenarios use the sensors
discovered on this machine (their sampling thread is what must not leak).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from greencallbacks.records import read_records
from greencallbacks.tracker import METRIC_STEMS, SUMMARY_FILE

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_backend_runner.py")
POWER_W, PUE, INTENSITY = 100.0, 1.5, 200.0  # as in the runner
TRAIN, VAL = 100, 30
VAL_STEMS = tuple(f"val_{s}" for s in METRIC_STEMS)


def require(*modules: str, purpose: str) -> None:
    """Skip, naming what is missing. Found, not imported: importing Keras here would fix this
    process's backend."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: {purpose} need it")


@pytest.fixture(scope="module", params=["torch", "tensorflow", "jax"])
def run(request, tmp_path_factory):
    require("keras", request.param, purpose=f"the Keras {request.param}-backend scenarios")
    out = tmp_path_factory.mktemp(f"keras-{request.param}")
    env = {**os.environ, "KERAS_BACKEND": request.param, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(RUNNER), request.param, str(out)], cwd=out, env=env, capture_output=True, text=True, timeout=300
    )
    # The runner's last fit raises uncaught, on purpose: exit status 1 with that traceback.
    assert done.returncode == 1 and "RuntimeError: boom" in done.stderr.splitlines()[-1], done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())

    def scenario(name):
        result = results[name]
        assert "error" not in result, result["error"]
        return result, out / name

    scenario.backend = request.param
    return scenario


def assert_scripted_energy(record):
    """The scripted sensor draws 100 W: facility energy = 100 W x duration x PUE; CO2 = kWh x intensity.

    The meter reads its clock just before the sensor reads the same clock; on a loaded 2-core CI
    machine the two reads can be several ms apart, so allow 20 ms of 100 W at each boundary.
    """
    assert record.energy_j == pytest.approx(POWER_W * record.duration_s * PUE, rel=1e-3, abs=POWER_W * PUE * 0.02)
    assert record.co2eq_g == pytest.approx(record.energy_kwh * INTENSITY, rel=1e-9)


# ------------------------------------------------------------------------------------ loggers
def test_history_and_records_hold_each_epochs_energy(run):
    result, out = run("loggers")
    history = result["history"]
    records = read_records(out / "energy")
    train = [r for r in records if r.phase == "train"]
    validation = [r for r in records if r.phase == "validation"]
    assert [r.epoch for r in train] == [0, 1, 2] and [r.epoch for r in validation] == [0, 1, 2]
    # Samples counted exactly, the last partial batch (100 = 3 x 32 + 4) included.
    assert [r.samples for r in train] == [TRAIN] * 3 and [r.samples for r in validation] == [VAL] * 3
    for record in train + validation:
        assert_scripted_energy(record)
        assert not record.partial
    for stem in METRIC_STEMS + VAL_STEMS:
        assert len(history[stem]) == 3, stem
        assert all(value > 0 and math.isfinite(value) for value in history[stem]), (stem, history[stem])
    # History holds exactly what the records say, epoch by epoch.
    assert history["energy_kwh"] == pytest.approx([r.energy_kwh for r in train], rel=1e-12)
    assert history["val_energy_kwh"] == pytest.approx([r.energy_kwh for r in validation], rel=1e-12)
    assert history["energy_j_per_sample"] == pytest.approx([r.energy_j / TRAIN for r in train], rel=1e-12)
    assert history["val_co2eq_g_per_sample"] == pytest.approx([r.co2eq_g / VAL for r in validation], rel=1e-12)
    for power_w, record in zip(history["power_w"], train):  # IT power, before PUE
        assert power_w * record.duration_s == pytest.approx(POWER_W * record.duration_s, abs=POWER_W * 0.02)
    # The training total is everything used so far (all phases and gaps), in the order written.
    last_train_index = records.index(train[-1])
    assert history["energy_kwh_total"][-1] == pytest.approx(sum(r.energy_kwh for r in records[: last_train_index + 1]), rel=1e-9)
    assert history["val_energy_kwh_total"][-1] == pytest.approx(sum(r.energy_kwh for r in validation), rel=1e-9)


def test_validation_is_billed_apart_from_training_and_no_interval_twice(run):
    _, out = run("loggers")
    records = read_records(out / "energy")
    unix = lambda iso: datetime.fromisoformat(iso).timestamp()  # noqa: E731
    # Validation runs inside the epoch, after the training steps.
    for epoch in range(3):
        (train,) = [r for r in records if r.phase == "train" and r.epoch == epoch]
        (validation,) = [r for r in records if r.phase == "validation" and r.epoch == epoch]
        assert unix(train.start_time) < unix(validation.start_time)
    # The records partition the run: their durations add up to its span (the last record is the
    # closing gap), so validation is not also inside the training record.
    last = max(records, key=lambda r: unix(r.start_time))
    span = unix(last.start_time) + last.duration_s - min(unix(r.start_time) for r in records)
    assert sum(r.duration_s for r in records) == pytest.approx(span, abs=3e-3)  # start times are in ms
    assert sum(r.energy_j for r in records) == pytest.approx(POWER_W * span * PUE, rel=1e-3, abs=POWER_W * PUE * 0.02)


def test_csv_logger_placed_first_gets_all_columns_from_the_first_epoch(run):
    result, out = run("loggers")
    with open(out / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert set(METRIC_STEMS + VAL_STEMS) <= set(rows[0])
    for row in rows:
        for stem in METRIC_STEMS + VAL_STEMS:
            assert float(row[stem]) > 0, (stem, row)
    history = result["history"]
    assert [float(row["energy_kwh_total"]) for row in rows] == pytest.approx(history["energy_kwh_total"], rel=1e-12)
    assert [float(row["val_energy_kwh"]) for row in rows] == pytest.approx(history["val_energy_kwh"], rel=1e-12)


def test_every_epoch_carries_the_same_keys_so_history_and_an_appended_csv_stay_aligned(run):
    """The prediction appears from a fit's 4th epoch. Its keys were added only then: History's
    lists had unequal lengths (pandas.DataFrame(history.history) raised, and the predicted list
    started at epoch 3 under index 0), and a second fit appending to the CSV wrote 25 fields
    under a 17-column header. NaN until known, as the other stems."""
    result, out = run("csv_across_fits")
    history = result["history"]
    assert {len(values) for values in history.values()} == {4}
    predicted = history["energy_kwh_predicted"]
    assert all(math.isnan(v) for v in predicted[:2]) and math.isfinite(predicted[3])
    with open(out / "log.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert len(rows) == 6 and all(len(row) == len(header) for row in rows)
    assert "energy_kwh_predicted" in header
    epochs = [dict(zip(header, row)) for row in rows]
    assert [int(e["epoch"]) for e in epochs] == list(range(6))
    totals = [float(e["energy_kwh_total"]) for e in epochs]
    assert totals == sorted(totals) and totals[:4] == pytest.approx(history["energy_kwh_total"], rel=1e-12)


def test_a_resume_that_finds_no_run_to_continue_says_so(run):
    """A new process resuming with a TensorBoard log_dir of its own (logs/fit/<timestamp>) found no
    state there and silently logged totals without the earlier attempts' energy."""
    result, out = run("resume_without_state")
    said = [w for w in result["warnings"] if "resumes at epoch 2" in w]
    assert len(said) == 1 and str(out / "fresh") in said[0] and "output_dir" in said[0], result["warnings"]
    assert [r for r in result["records"] if r[0] == "train"] == [["train", 2, 0]]  # measured, as a run of its own


def test_a_logger_before_the_callback_is_overtaken_loudly_and_every_hook_runs_once(run):
    result, _ = run("loggers")
    order_warnings = [w for w in result["warnings"] if "moved itself to the front" in w]
    assert len(order_warnings) == 1
    assert "CSVLogger" in order_warnings[0] and "Put EnergyCallback first" in order_warnings[0]
    if run.backend == "tensorflow":
        assert "TensorBoard" in order_warnings[0]
    # A callback after EnergyCallback is still called exactly once per hook after the move.
    assert result["calls_after_energy"] == {"on_train_begin": 1, "on_epoch_end": 3, "on_train_end": 1}
    assert result["energy_seen_after"] == [True, True, True]
    inference, _ = run("inference")  # EnergyCallback first: nothing to say
    assert not [w for w in inference["warnings"] if "moved itself" in w]


def test_two_callbacks_in_one_fit_say_their_metric_names_collide(run):
    result, _ = run("two_callbacks")
    collisions = [w for w in result["warnings"] if "two EnergyCallbacks in one fit log the same metric names" in w]
    assert len(collisions) == 1
    assert not [w for w in result["warnings"] if "moved itself" in w]  # not an order problem
    # One EnergyCallback listed twice: each phase begun and counted once (was: twice, nested, 2x samples).
    twice = [w for w in result["twice_warnings"] if "listed 2 times" in w]
    assert len(twice) == 3 and not [w for w in result["twice_warnings"] if "two EnergyCallbacks" in w], result["twice_warnings"]
    phases = [(phase, epoch, samples) for phase, epoch, samples in result["twice_records"] if phase != "other"]
    assert phases == [("validation", 0, 20), ("train", 0, 100), ("validation", 1, 20), ("train", 1, 100),
                      ("test", None, 50), ("predict", None, 30)], phases  # in the order they ended
    assert result["twice_history_epochs"] == 2


def test_tensorboard_event_files_hold_train_and_validation_energy(run):
    if run.backend != "tensorflow":
        pytest.skip("keras.callbacks.TensorBoard is run on the tensorflow backend")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    result, out = run("loggers")
    history = result["history"]
    for subdir, prefix in (("train", ""), ("validation", "val_")):
        events = EventAccumulator(str(out / "tb" / subdir))
        events.Reload()
        for stem in METRIC_STEMS:
            values = [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors(f"epoch_{stem}")]
            assert [step for step, _ in values] == [0, 1, 2]
            # float32 in the event file
            assert [v for _, v in values] == pytest.approx(history[prefix + stem], rel=1e-6), (subdir, stem)


# ------------------------------------------------------------------------ evaluate and predict
def test_evaluate_and_predict_are_recorded_with_their_sample_counts(run):
    result, out = run("inference")
    records = read_records(out)
    assert {r.run_id for r in records} == {records[0].run_id}  # one run: training and inference together
    assert not [r for r in records if r.phase == "validation"]  # evaluate() is `test`, not validation
    (train,) = [r for r in records if r.phase == "train"]
    (test,) = [r for r in records if r.phase == "test"]
    (predict,) = [r for r in records if r.phase == "predict"]
    assert (train.samples, test.samples, predict.samples) == (TRAIN, 50, 70)  # 50 = 3 x 16 + 2, 70 = 4 x 16 + 6
    assert result["predicted"] == 70
    assert test.epoch is None and predict.epoch is None
    for record in (train, test, predict):
        assert_scripted_energy(record)
    for phase, record, samples in (("test", test, 50), ("predict", predict, 70)):
        metrics = result[f"{phase}_metrics"]
        assert set(metrics) == set(METRIC_STEMS)
        assert metrics["energy_kwh"] == pytest.approx(record.energy_kwh, rel=1e-12)
        assert metrics["energy_j_per_sample"] == pytest.approx(record.energy_j / samples, rel=1e-12)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert result["threads_after"] == []


def test_a_custom_step_counting_batches_is_uncounted_and_one_weighting_by_the_batch_size_counts(run):
    """A train_step / test_step as in Keras's guide gives the loss tracker one count per batch: never
    taken for samples. Weighting by the batch size counts (training, fit's validation, evaluate: the
    steps run come from the batch hooks); Keras's own step counts, even with batches of one."""
    result, out = run("custom_steps")
    if "skipped" in result:
        pytest.skip(result["skipped"])

    def counted(name):
        records = read_records(out / name)
        return {phase: [r.samples if r.samples_counted else None for r in records if r.phase == phase]
                for phase in ("train", "validation", "test")}

    uncounted = {"train": [None, None], "validation": [None, None], "test": [None]}
    assert counted("guide") == uncounted  # 4 and 1 (the batches), before the fix
    assert counted("guide_samples_per_epoch") == {**uncounted, "train": [TRAIN, TRAIN]}
    assert counted("weighted") == {"train": [TRAIN, TRAIN], "validation": [VAL, VAL], "test": [50]}  # validation: None before
    assert counted("builtin_batch_1") == {"train": [20, 20], "validation": [VAL, VAL], "test": [50]}
    for record in read_records(out / "guide"):
        assert record.phase not in ("train", "validation", "test") or record.energy_j_per_sample is None
    for name in ("guide", "guide_samples_per_epoch"):  # one warning, per run
        assert len(result[name]["warnings"]) == 1 and "once per batch" in result[name]["warnings"][0], result[name]
    assert result["weighted"]["warnings"] == result["builtin_batch_1"]["warnings"] == []


def test_an_evaluate_inside_a_training_epoch_leaves_the_epochs_count_exact(run):
    """Each test loop inside the epoch (two evaluates a callback runs, fit's validation) resets
    Keras's metrics; the count is banked before each (66, marked counted, before the fix)."""
    _, out = run("evaluate_inside_an_epoch")
    records = read_records(out)
    counted = lambda phase: [r.samples if r.samples_counted else None for r in records if r.phase == phase]  # noqa: E731
    assert counted("train") == [TRAIN, TRAIN]
    assert counted("test") == [VAL] * 4 and counted("validation") == [VAL, VAL]


def test_a_custom_loop_around_train_on_batch_is_uncounted_unless_samples_per_epoch_is_given(run):
    """train_on_batch / test_on_batch reset the metrics every batch (Keras 3.15; 3.3 never does):
    the loss tracker's count is one batch's, or everything since the model was built (4 and 10,
    marked counted, before the fix)."""
    result, out = run("custom_loop")

    def phases(name):
        records = read_records(out / name)
        return {phase: [r.samples if r.samples_counted else None for r in records if r.phase == phase] for phase in ("train", "test")}

    assert phases("uncounted") == {"train": [None, None], "test": [None]}
    assert phases("samples_per_epoch") == {"train": [TRAIN, TRAIN], "test": [None]}
    for name in ("uncounted", "samples_per_epoch"):  # one warning, per run, saying why
        assert len(result[name]["warnings"]) == 1 and "train_on_batch" in result[name]["warnings"][0], result[name]


def test_a_callback_list_without_training_parameters_measures_every_epoch(run):
    """Keras never calls set_params on a CallbackList given to fit (params None): epoch 0 was lost
    to an AttributeError, billed to `other` and logged NaN, before the fix."""
    result, out = run("callback_list_without_params")
    assert not result["params"]  # None, or never set (Keras 3.3): so the scenario can fail
    train = [r for r in read_records(out) if r.phase == "train"]
    assert [(r.epoch, r.samples) for r in train] == [(0, TRAIN), (1, TRAIN), (2, TRAIN)]
    assert result["history"]["energy_kwh"] == pytest.approx([r.energy_kwh for r in train], rel=1e-12)
    assert not [w for w in result["warnings"] if "failed" in w], result["warnings"]


def test_the_callback_keeps_keras_async_batch_dispatch(run):
    """No per-batch slow path: Keras dispatches batch hooks exactly as it would without the callback."""
    result, _ = run("inference")
    if result["async_dispatch"]["without"] == [None, None, None]:
        pytest.skip("this Keras has no asynchronous callback dispatch (CallbackList._async_train is newer than 3.3)")
    assert result["async_dispatch"]["with_energy"] == result["async_dispatch"]["without"]
    if run.backend == "torch":  # the tensorflow backend never dispatches asynchronously
        assert result["async_dispatch"]["without"] == [True, True, True]


# --------------------------------------------------------------------------- failure and resume
def test_a_fit_that_raises_keeps_finished_epochs_and_leaks_no_thread(run):
    result, out = run("crash_then_resume")
    assert result["raised"]
    assert result["threads_during_fit"] == ["greencallbacks-meter"]  # so the check below can fail
    # Epoch 0 was on disk before the exception reached the caller.
    assert ["train", 0, False] in result["on_disk_at_raise"]
    # Once the exception is handled (fit's frames released), the thread is gone and epoch 1 is
    # written as partial.
    assert result["threads_after_crash"] == []
    train = [(r["epoch"], r["partial"]) for r in result["after_crash"] if r["phase"] == "train"]
    assert train == [(0, False), (1, True)]
    partial = [r for r in result["after_crash"] if r["partial"]]
    assert partial and all(r["energy_kwh"] > 0 for r in partial)
    # The cut-short epoch: at the optimizer's step where fit failed (4 + 2 batches; 4 before the
    # fix), with the samples of those 2 batches of 32 (Keras's count comes at the epoch's end: 0,
    # counted, before a first fix, then uncounted; now its data's fixed batch size times the batches).
    (cut,) = [r for r in partial if r["phase"] == "train"]
    assert (cut["step"], cut["samples"], cut["samples_counted"]) == (6, 64, True)


def test_a_failed_calls_unfinished_phases_say_their_step_and_what_was_counted(run):
    result, out = run("partial_labels")
    assert result["threads_after"] == []
    # Ctrl-C in epoch 1's validation: training and validation partial at step 8; the training
    # counted as the validation began (all of it), the validation uncounted.
    labels = sorted((r.epoch, r.phase, r.partial, r.samples if r.samples_counted else None, r.step)
                    for r in read_records(out / "validation") if r.phase != "other")
    assert labels == [(0, "train", False, TRAIN, 4), (0, "validation", False, VAL, 4),
                      (1, "train", True, TRAIN, 8), (1, "validation", True, None, 8)]
    (test,) = [r for r in read_records(out / "evaluate") if r.phase == "test"]
    assert test.partial and not test.samples_counted
    (predict,) = [r for r in read_records(out / "predict") if r.phase == "predict"]
    assert predict.partial and (predict.samples, predict.samples_counted) == (48, True)  # 3 batches of 16


def test_backup_and_restore_resume_continues_the_run_and_counts_everything_once(run):
    result, out = run("crash_then_resume")
    records = read_records(out / "energy")
    assert result["resumed_epochs"] == 2  # BackupAndRestore restarted at epoch 1
    assert {r.run_id for r in records} == {result["after_crash"][0]["run_id"]}
    assert len({r.seq for r in records}) == len(records)  # no record of the run written twice
    finished = [r.epoch for r in records if r.phase == "train" and not r.partial]
    assert finished == [0, 1, 2]
    before = sum(r["energy_kwh"] for r in result["after_crash"])
    totals = result["resumed_history"]["energy_kwh_total"]
    # The first resumed epoch's total continues from everything measured before the crash.
    first_resumed = next(r for r in records if r.phase == "train" and r.epoch == 1 and not r.partial)
    assert totals[0] > before
    assert totals[0] == pytest.approx(sum(r.energy_kwh for r in records[: records.index(first_resumed) + 1]), rel=1e-9)
    summary = json.loads((out / "energy" / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert result["threads_after_resume"] == []


def test_backup_and_restore_inside_epoch_0_continues_the_run_and_a_new_fit_does_not(run):
    result, out = run("backup_inside_epoch_0")
    assert (result["first_epoch"], result["restored_step"]) == (0, 2)  # Keras resumed epoch 0 after its 2nd step
    records = read_records(out / "energy")
    runs = list(dict.fromkeys(r.run_id for r in records))
    assert len(runs) == 2, [(r.run_id, r.attempt, r.phase, r.epoch) for r in records]  # 3 before the fix
    resumed, new = ([r for r in records if r.run_id == run_id] for run_id in runs)
    assert [(r.attempt, r.epoch, r.partial) for r in resumed if r.phase == "train"] == [(0, 0, True), (1, 0, False), (1, 1, False)]
    assert len({r.seq for r in resumed}) == len(resumed)
    # The resumed fit's summary covers both attempts (the crashed one's energy was in another run).
    summary = result["summary_after_resume"]
    assert summary["run_id"] == resumed[0].run_id
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in resumed), rel=1e-9)
    assert [(r.attempt, r.epoch) for r in new if r.phase == "train"] == [(0, 0)]
    assert result["threads_after"] == []
    if run.backend != "torch":
        return
    # Killed inside epoch 0 (no exception, no exit hook) after another run had written energy-state.json:
    # the resume continues the killed run, not the one before it.
    assert result["preempted_exit"][0] == 0, result["preempted_exit"][1]
    assert result["preempted_restored_step"] == 2
    records = read_records(out / "preempted" / "energy")
    runs = list(dict.fromkeys(r.run_id for r in records))
    assert len(runs) == 2, [(r.run_id, r.attempt, r.phase, r.epoch) for r in records]
    before, killed = ([r for r in records if r.run_id == run_id] for run_id in runs)
    assert [(r.attempt, r.epoch) for r in before if r.phase == "train"] == [(0, 0)]
    # Attempt 0 was killed before it closed a phase: of it, only the gap before its first epoch,
    # open in the state written as the fit began, is carried by the resume (resume._carry).
    assert {(r.attempt, r.phase) for r in killed if r.attempt == 0} == {(0, "other")}
    assert [(r.attempt, r.epoch, r.partial) for r in killed if r.phase == "train"] == [(1, 0, False), (1, 1, False)]
    # The same, killed in the first fit ever made into its directory (energy-state.json's folder
    # did not exist yet: the state was never written, and the resume began a run of its own).
    assert result["preempted_fresh_exit"][0] == 0, result["preempted_fresh_exit"][1]
    assert not [w for w in result["preempted_fresh_warnings"] if "no earlier run" in w], result["preempted_fresh_warnings"]
    records = read_records(out / "preempted_fresh" / "energy")
    assert {(r.attempt, r.phase) for r in records if r.attempt == 0} == {(0, "other")}  # as above
    assert {r.attempt for r in records} == {0, 1} and len({r.run_id for r in records}) == 1


def test_a_backup_resumes_its_own_run_after_another_fit_wrote_the_directory(run):
    result, _ = run("backup_after_another_fit")
    assert result["resumed"] == result["crashed"] != result["other"] and result["attempt"] == 1


def test_a_callback_given_a_run_id_resumes_that_run_not_the_last_one_in_its_directory(run):
    result, out = run("run_ids_in_one_directory")
    assert result["resumed"] == ["a", 1], result  # ["b", 1] before the fix: it continued run b
    records = read_records(out / "both")
    trained = {run_id: [(r.epoch, r.attempt) for r in records if r.run_id == run_id and r.phase == "train"]
               for run_id in ("a", "b")}
    assert trained == {"a": [(0, 0), (1, 0), (2, 1)], "b": [(0, 0), (1, 0), (2, 0), (3, 0)]}
    assert not [w for w in result["warnings"] if "resumes at epoch" in w], result["warnings"]
    # Only another run's state there: not continued (it was, silently), a new run, said.
    assert result["alone"] == ["a", 0], result
    (said,) = [w for w in result["alone_warnings"] if "resumes at epoch 2" in w]
    assert "run_id 'a'" in said and "only run b" in said, said
    assert result["after_a_rename"] == ["j", 1], result  # ["j-3", 0] before: "j-2" had written j's state


def test_a_loop_of_fits_given_a_run_id_run_again_is_one_run(run):
    """for e in range(3): fit(epochs=e + 1, initial_epoch=e) with a new EnergyCallback(run_id="loop"),
    the script run twice into one directory. The second's first fit is "loop-2" (the id had
    records); its later fits continued "loop" silently (loop: epochs 0, 1, 2, 1, 2; loop-2: epoch 0
    only) before the fix: the same model last trained "loop-2", which is continued."""
    result, out = run("loop_run_again")
    records = read_records(out)
    trained = {run_id: [(r.epoch, r.attempt) for r in records if r.run_id == run_id and r.phase == "train"]
               for run_id in ("loop", "loop-2")}
    assert trained == {"loop": [(0, 0), (1, 1), (2, 2)], "loop-2": [(0, 0), (1, 1), (2, 2)]}, trained
    assert {r.run_id for r in records} == {"loop", "loop-2"}
    assert result["first"]["warnings"] == []
    (renamed,) = result["again"]["warnings"]  # the rename, said once; no epoch "trained again"
    assert "recorded as 'loop-2'" in renamed, renamed
    for run_id, execution in (("loop", "first"), ("loop-2", "again")):
        mine = [r for r in records if r.run_id == run_id]
        assert len({r.seq for r in mine}) == len(mine)
        last_train = max(i for i, r in enumerate(mine) if r.phase == "train")
        assert result[execution]["totals"][-1] == pytest.approx(sum(r.energy_kwh for r in mine[: last_train + 1]), rel=1e-9)


def test_two_callbacks_in_one_fit_each_resume_their_own_run(run):
    result, out = run("two_callbacks_resume")
    for name in ("by_order", "by_run_id"):
        crashed, resumed = result[name]["crashed"], result[name]["resumed"]
        assert len(set(crashed)) == 2
        # Before the fix the first continued the second's run and the second began a new one.
        assert resumed == [[run_id, 1] for run_id in crashed], (name, result[name])
        assert not [w for w in result[name]["warnings"] if "another process" in w], result[name]["warnings"]
        records = read_records(out / name)
        for run_id in crashed:
            mine = [r for r in records if r.run_id == run_id]
            assert [(r.epoch, r.attempt, r.partial) for r in mine if r.phase == "train"] == [
                (0, 0, False), (1, 0, True), (1, 1, False), (2, 1, False)], (name, run_id)
            assert len({r.seq for r in mine}) == len(mine)


def test_an_uncaught_exception_still_writes_the_unfinished_epoch_at_exit(run):
    _, out = run("crash_then_reuse")  # any scenario: this checks the runner's last, uncaught fit
    records = read_records(out.parent / "uncaught")
    assert [(r.epoch, r.partial, r.step) for r in records if r.phase == "train"] == [(0, False, 4), (1, True, 6)]
    assert json.loads((out.parent / "uncaught" / SUMMARY_FILE).read_text())["energy_kwh"] == pytest.approx(
        sum(r.energy_kwh for r in records), rel=1e-9
    )


def test_a_fit_that_raised_is_closed_while_the_exception_is_still_kept(run):
    result, out = run("crash_then_reuse")
    # The caller keeps the exception (and so fit's frames, as a notebook's sys.last_traceback
    # does): the watch still sees fit leave the stack, writes the partial epoch, stops the thread.
    assert result["threads_while_kept"] == []
    assert result["threads_after_reuse"] == []
    records = read_records(out)
    assert [(r.epoch, r.partial) for r in records if r.phase == "train"] == [(0, True)]
    (test,) = [r for r in records if r.phase == "test"]
    assert test.samples == 40 and not test.partial


def test_a_fit_from_epoch_0_starts_a_new_run_and_a_later_initial_epoch_continues_it(run):
    result, out = run("runs")
    records = read_records(out)
    runs = list(dict.fromkeys(r.run_id for r in records))
    assert len(runs) == 2
    first, second = ([r for r in records if r.run_id == run_id] for run_id in runs)
    assert [r.epoch for r in first if r.phase == "train"] == [0, 1]  # fit(), then fit(initial_epoch=1)
    assert [r.epoch for r in second if r.phase == "train"] == [0]
    continued_total = result["totals"][1][0]
    # Totals continue through the continued fit and start from zero in the new run.
    train_1 = next(r for r in first if r.phase == "train" and r.epoch == 1)
    assert continued_total == pytest.approx(sum(r.energy_kwh for r in first[: first.index(train_1) + 1]), rel=1e-9)
    assert continued_total > result["totals"][0][0]
    train_new = next(r for r in second if r.phase == "train")
    assert result["totals"][2][0] == pytest.approx(sum(r.energy_kwh for r in second[: second.index(train_new) + 1]), rel=1e-9)


# A sweep's trials share one output_dir and give no run_id; each "new process" is a new callback.
SWEEP_SCRIPT = """
import json, sys, warnings
import numpy as np, keras
from greencallbacks import watch
from greencallbacks.keras import EnergyCallback

out = sys.argv[1]
rng = np.random.default_rng(0)
X, Y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")

def model():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile("sgd", "mse")
    return m

class RaiseInEpoch1(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1:
            raise RuntimeError("boom")

def fit(m, callback, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.fit(X, Y, batch_size=16, verbose=0, callbacks=[callback], **kwargs)
    said = [str(w.message) for w in caught if "trained again" in str(w.message)]
    return [callback.tracker.run_id, callback.tracker.ledger.attempt, said]

def energy(**kwargs):
    return EnergyCallback(intensity=100, **kwargs)

result = {}
trial_a = energy(output_dir=out + "/sweep")
try:
    model().fit(X, Y, batch_size=16, epochs=4, verbose=0, callbacks=[trial_a, RaiseInEpoch1()])
except RuntimeError:
    watch.settle()
result["a"] = trial_a.tracker.run_id
result["b"] = fit(model(), energy(output_dir=out + "/sweep"), epochs=4)
result["a_again"] = fit(model(), energy(output_dir=out + "/sweep"), epochs=4, initial_epoch=1)
# The same training, in one process: fit(epochs=3), then epochs 1 and 2 again. Said nothing.
same, m = energy(output_dir=out + "/same"), model()
result["same_first"] = fit(m, same, epochs=3)
result["same_again"] = fit(m, same, epochs=3, initial_epoch=1)
# One callback reused for the next trial's model.
result["reused_again"] = fit(model(), same, epochs=3, initial_epoch=1)
# The same model refitted with a new callback each time (callbacks=[EnergyCallback(...)] inline).
m = model()
result["inline_first"] = fit(m, energy(output_dir=out + "/inline"), epochs=3)
result["inline_again"] = fit(m, energy(output_dir=out + "/inline"), epochs=3, initial_epoch=1)
# A run_id names the trial: its state, in a file of its own, is surely its own.
result["named_first"] = fit(model(), energy(output_dir=out + "/named", run_id="t1"), epochs=3)
result["named_again"] = fit(model(), energy(output_dir=out + "/named", run_id="t1"), epochs=3, initial_epoch=1)
json.dump(result, open(out + "/result.json", "w"))
"""


def test_a_resume_that_continues_a_run_which_went_past_its_epoch_says_so(tmp_path):
    """A sweep's trials in one output_dir without a run_id: trial A failed in epoch 1, trial B
    trained 4 epochs, A reran with fit(initial_epoch=1) and silently became attempt 1 of B's run
    (B's records: epochs 0-3, then 1-3 again). No identity tells A from B there (see
    ``_trained_again``): the continuation stays, said, with the way to keep trials apart."""
    require("keras", "torch", purpose="the Keras sweep scenario")
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", SWEEP_SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    b_run, _, b_said = result["b"]
    run_id, attempt, said = result["a_again"]
    assert (run_id, attempt) == (b_run, 1) and b_run != result["a"] and not b_said
    assert len(said) == 1, said  # nothing was said before the fix
    said = said[0]
    assert f"continues run {b_run}" in said and "reached epoch 3" in said and "epochs 1..3 are" in said, said
    assert str(tmp_path / "sweep" / "energy-state.json") in said and "run_id=" in said and "output_dir=" in said, said
    # Nothing said where the run surely is the one resuming.
    assert result["same_again"][:2] == [result["same_first"][0], 1] and result["same_again"][2] == []
    assert result["named_again"][:2] == ["t1", 1] and result["named_again"][2] == []
    assert result["inline_again"][:2] == [result["inline_first"][0], 1] and result["inline_again"][2] == []
    (said,) = result["reused_again"][2]
    assert "this callback's last run, which trained another model" in said and "epochs 1..2 are" in said, said


def test_evaluate_and_predict_before_a_resumed_fit_leave_it_the_run_that_trained(run):
    """An inference-only call wrote energy-state.json (and a callback that served one resumed from
    its own run): the resumed fit was a new run, its logged total only the new epochs (3 runs)."""
    result, out = run("inference_before_resume")
    for name in ("same_callback", "inline"):
        records = read_records(out / name)
        runs = list(dict.fromkeys(r.run_id for r in records))
        (trained,) = [run_id for run_id in runs if any(r.run_id == run_id and r.phase == "train" for r in records)]
        mine = [r for r in records if r.run_id == trained]
        assert [(r.epoch, r.attempt) for r in mine if r.phase == "train"] == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1)], name
        assert len({r.seq for r in mine}) == len(mine)
        # The inference is a run of its own, with no training (one run for both, with one callback).
        others = [r for r in records if r.run_id != trained]
        assert {r.phase for r in others} == {"test", "predict", "other"}, name
        assert len(runs) == (2 if name == "same_callback" else 3), name
        last_train = max(i for i, r in enumerate(mine) if r.phase == "train")
        assert result[name]["logged_total"] == pytest.approx(sum(r.energy_kwh for r in mine[: last_train + 1]), rel=1e-9)
        assert result[name]["summary"]["run_id"] == trained
        assert result[name]["summary"]["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in mine), rel=1e-9)


def test_inline_callbacks_on_one_model_measure_one_run(run):
    """fit, evaluate, fit(initial_epoch=2), predict, each with a new EnergyCallback written inline:
    evaluate and predict continue the run the model trained, as the resumed fit does (each was a
    run of its own before the fix: 3 runs); a callback given another run_id does not."""
    result, out = run("inline_calls")
    records = read_records(out / "inline")
    runs = list(dict.fromkeys(r.run_id for r in records))
    assert len(runs) == 2 and runs[1] == result["inline"]["other"] == "other", runs
    mine = [r for r in records if r.run_id == runs[0]]
    assert [(r.phase, r.epoch, r.attempt, r.samples) for r in mine if r.phase != "other"] == [
        ("train", 0, 0, TRAIN), ("train", 1, 0, TRAIN), ("test", None, 1, VAL), ("train", 2, 2, TRAIN),
        ("train", 3, 2, TRAIN), ("predict", None, 3, VAL)]
    assert len({r.seq for r in mine}) == len(mine)
    last_train = max(i for i, r in enumerate(mine) if r.phase == "train")
    assert result["inline"]["logged_total"] == pytest.approx(sum(r.energy_kwh for r in mine[: last_train + 1]), rel=1e-9)
    assert [(r.phase, r.samples) for r in records if r.run_id == "other" and r.phase != "other"] == [("test", VAL)]


def test_a_callback_goes_on_with_its_run_after_an_inline_one_continued_it(run):
    """fit with a kept callback, fit(initial_epoch=2) with an inline one (same run), then evaluate
    and fit(initial_epoch=3) with the kept one: it went on from its own out-of-date ledger (seq
    numbers repeated) and took the run for one that reached epoch 1 only (a new run, said)."""
    result, out = run("inline_calls")
    records = read_records(out / "kept")
    assert len({r.run_id for r in records}) == 1
    assert len({r.seq for r in records}) == len(records)
    assert [(r.phase, r.epoch, r.attempt) for r in records if r.phase != "other"] == [
        ("train", 0, 0), ("train", 1, 0), ("train", 2, 1), ("test", None, 2), ("train", 3, 3)]
    assert result["kept"]["warnings"] == []
    last_train = max(i for i, r in enumerate(records) if r.phase == "train")
    assert result["kept"]["logged_total"] == pytest.approx(sum(r.energy_kwh for r in records[: last_train + 1]), rel=1e-9)


def test_bad_configuration_fails_at_construction(run):
    result, _ = run("bad_configuration")
    assert "samples_per_epoch" in result["messages"]["samples_per_epoch"]
    assert "pue" in result["messages"]["pue"]


def test_the_callback_can_be_copied_and_pickled_fresh_or_used(run):
    result, out = run("copies")
    assert len(set(result["runs"])) == 4  # each copy measured a run of its own
    assert {r.run_id for r in read_records(out) if r.phase == "train"} == set(result["runs"])


# -------------------------------------------------------------------------------- distributed
@pytest.mark.distributed
def test_torch_distributed_ranks_are_summed_and_the_host_counted_once(tmp_path):
    """Two real gloo ranks on one host, each fitting under Keras's torch backend."""
    require("keras", "torch", purpose="the Keras distributed scenario")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(__file__).with_name("keras_ddp_script.py")
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": ""}
    ranks = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path)], env={**base, "RANK": str(r)}, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    errors = [rank.communicate(timeout=240)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], "\n".join(e[-3000:] for e in errors)

    records = read_records(tmp_path / "energy")  # written by rank 0 only
    assert not list((tmp_path / "energy").glob("energy-records.rank*.jsonl"))
    train = [r for r in records if r.phase == "train"]
    validation = [r for r in records if r.phase == "validation"]
    assert [r.samples for r in train] == [2 * 48, 2 * 48] and [r.samples for r in validation] == [2 * 20, 2 * 20]
    for record in train + validation:
        assert record.ranks == 2 and record.energy_kwh > 0
        # The host (CPU, RAM) is measured by the first rank on it only; rank 1 has no device of its own.
        host_parts = [c for c in record.components if c["kind"] in ("cpu", "ram")]
        assert sorted(c["kind"] for c in host_parts) == ["cpu", "ram"]
        assert {c["rank"] for c in record.components} == {0}
    # Both ranks logged the same, summed, numbers.
    histories = [json.loads((tmp_path / f"history-rank{r}.json").read_text()) for r in range(2)]
    for key in ("energy_kwh", "val_energy_kwh", "energy_kwh_total", "energy_j_per_sample"):
        assert histories[0][key] == histories[1][key]
    assert histories[0]["energy_kwh"] == pytest.approx([r.energy_kwh for r in train], rel=1e-12)


def test_without_the_callback_list_seam_every_epoch_is_still_logged_and_validation_told_apart(run):
    result, _ = run("no_callback_list_seam")
    history = result["history"]
    assert len(history["energy_kwh"]) == 2 and len(history["val_energy_kwh"]) == 2
    phases = [(phase, epoch, partial) for phase, epoch, partial, _ in result["records"] if phase != "other"]
    assert phases == [("validation", 0, False), ("train", 0, False), ("validation", 1, False), ("train", 1, False),
                      ("test", None, False)]
    assert result["threads_after"] == []


FIRST_EPOCH_CRASH_SCRIPT = """
import json, sys, warnings
import numpy as np, keras
from greencallbacks.keras import EnergyCallback

out, crash = sys.argv[1], sys.argv[2] == "crash"
rng = np.random.default_rng(0)
X, Y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
m.compile("sgd", "mse")

class RaiseInBatch1(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            raise RuntimeError("boom")

callback = EnergyCallback(output_dir=out, intensity=100)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        m.fit(X, Y, batch_size=8, epochs=4, initial_epoch=2, verbose=0,
              callbacks=[callback] + ([RaiseInBatch1()] if crash else []))
    except RuntimeError:
        pass
said = [str(w.message) for w in caught if "measured as a new run" in str(w.message)]
json.dump([callback.tracker.run_id, callback.tracker.ledger.attempt, said], sys.stdout)
"""


def test_a_run_begun_at_a_later_epoch_that_crashed_in_it_is_continued_by_its_resume(tmp_path):
    """fit(initial_epoch=2) in a new process (its earlier epochs' records elsewhere), killed inside
    epoch 2, then resumed at epoch 2: its state said it had reached no epoch (read as -1, below
    the 1 a resume at 2 needs), so the resume was a new run, the crashed attempt's energy left out."""
    require("keras", "torch", purpose="the Keras first-epoch crash scenario")
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

    def attempt(mode):
        done = subprocess.run([sys.executable, "-c", FIRST_EPOCH_CRASH_SCRIPT, str(tmp_path), mode], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first_run, first_attempt, first_said = attempt("crash")
    assert first_attempt == 0 and len(first_said) == 1  # nothing before epoch 2 here: said once
    run_id, resumed_attempt, said = attempt("resume")
    assert (run_id, resumed_attempt, said) == (first_run, 1, [])
    records = read_records(tmp_path / "energy-records.jsonl")
    assert {r.run_id for r in records} == {first_run}
    trains = [(r.attempt, r.epoch, r.partial) for r in records if r.phase == "train"]
    assert trains == [(0, 2, True), (1, 2, False), (1, 3, False)], trains
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["run_id"] == first_run and summary["energy_kwh"] == pytest.approx(
        sum(r.energy_kwh for r in records), rel=1e-9)
