"""KerasTuner searches of ``test_keras_tuner.py`` on one backend, in a process of its own.

    python tests/keras_tuner_runner.py <backend> <out_dir> <scenario,...>

KerasTuner deep-copies the search's ``callbacks`` for every execution of every trial and fits a
model built anew each time; Hyperband's later brackets build a model, load the weights another
trial saved and fit it from ``initial_epoch`` > 0. Each scenario runs a real search with a scripted
50 W sensor, checks that every execution is a run of its own whose records add up to its summary,
with exact samples, and writes "ok" or its failure to ``<out_dir>/results.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from keras_runner_common import BATCH, POWER_W, TRAIN, VAL, X, XV, Y, YV, run_scenarios  # first: it picks the backend

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import pytest  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.report import group_runs, render  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402


class FailsInItsSecondEpoch(keras.layers.Layer):
    """Passes its input on; raises at the 6th training batch it sees (epoch 1 of 4 batches each).
    Eager on the torch backend, where the scenarios run."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batches = 0

    def call(self, x, training=None):
        if training:
            self.batches += 1
            if self.batches == 6:
                raise RuntimeError("this trial fails in its second epoch")
        return x


def builder(failing_build: int | None = None):
    """A KerasTuner build function; its ``failing_build``-th model (from 1) fails in epoch 1."""
    built = [0]

    def build(hp) -> keras.Model:
        built[0] += 1
        layers = [keras.Input((8,)), keras.layers.Dense(hp.Int("units", 2, 16, step=2), activation="relu"),
                  keras.layers.Dense(1)]
        if built[0] == failing_build:
            layers.insert(2, FailsInItsSecondEpoch())
        model = keras.Sequential(layers)
        model.compile(optimizer=keras.optimizers.Adam(hp.Float("lr", 1e-3, 1e-2, sampling="log")), loss="mse")
        return model

    return build


def runs_in_order(out: Path) -> dict[str, list]:
    """Each run's records, in the order the runs began."""
    runs: dict[str, list] = {}
    for record in read_records(out / "energy-records.jsonl"):
        runs.setdefault(record.run_id, []).append(record)
    return runs


def summary_of(out: Path, run_id: str) -> dict:
    """The run's summary, the directory's latest or one kept under its run id."""
    for path in [out / "energy-summary.json", out / f"energy-summary-{run_id}.json"]:
        if path.exists() and (summary := json.loads(path.read_text()))["run_id"] == run_id:
            return summary
    raise AssertionError(f"no summary of run {run_id} in {out}")


def check_every_run(out: Path) -> dict[str, list]:
    """Each run: one attempt, records adding up to its summary, 100 training and 30 validation samples per epoch."""
    assert not meter_threads()
    runs = runs_in_order(out)
    for run_id, records in runs.items():
        check_run(run_id, [out], power_w=POWER_W, context=run_id)
        assert {r.attempt for r in records} == {0}, f"run {run_id} has records of other fits: {records}"
        total_j = sum(r.energy_kwh for r in records) * 3.6e6
        assert summary_of(out, run_id)["energy_kwh"] * 3.6e6 == pytest.approx(total_j, rel=1e-9), run_id
        for r in records:
            if r.phase in ("train", "validation") and not r.partial:
                assert (r.samples, r.samples_counted) == ({"train": TRAIN, "validation": VAL}[r.phase], True), r
    return runs


def energy_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]


def random_search_with_a_failing_trial(out: Path) -> None:
    """3 trials of 2 executions each, one execution failing in its second epoch (KerasTuner records
    its trial failed and goes on); then the best model and a final fit."""
    energy = out / "energy"
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0, output_dir=energy)
    tuner = keras_tuner.RandomSearch(
        builder(failing_build=3), objective="val_loss", max_trials=3, executions_per_trial=2, seed=1,
        directory=str(out / "tuner"), project_name="random", max_consecutive_failed_trials=3,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.search(X, Y, epochs=2, batch_size=BATCH, validation_data=(XV, YV), callbacks=[callback], verbose=0)
    said = energy_warnings(caught)
    assert said == [], said
    statuses = [trial.status for trial in tuner.oracle.trials.values()]
    assert sorted(statuses) == ["COMPLETED", "COMPLETED", "FAILED"], statuses
    runs = check_every_run(energy)
    # KerasTuner builds a model to learn the search space first: build 3 is trial 0's second execution.
    assert len(runs) == 6, list(runs)
    failed = [run_id for run_id in runs if summary_of(energy, run_id)["ended"] == "failed"]
    assert len(failed) == 1, failed
    cut_short = runs[failed[0]]
    assert [(r.phase, r.epoch, r.partial) for r in cut_short if r.phase == "train"] == [("train", 0, False), ("train", 1, True)]
    # The report never pools the trial cut short with those that finished.
    groups = {tuple(sorted({r.run_id for r in group})) for _, group in group_runs(read_records(energy / "energy-records.jsonl"))}
    assert groups == {(failed[0],), tuple(sorted(set(runs) - {failed[0]}))}, groups
    assert not callback._run_used  # the search fitted copies; the original is as it was given

    best = tuner.get_best_models(1)[0]
    model = tuner.hypermodel.build(tuner.get_best_hyperparameters(1)[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, Y, epochs=2, batch_size=BATCH, validation_data=(XV, YV), callbacks=[callback], verbose=0)
        best.evaluate(XV, YV, batch_size=BATCH, callbacks=[callback], verbose=0)
    said = energy_warnings(caught)
    assert said == [], said
    after = check_every_run(energy)
    final = [run_id for run_id in after if run_id not in runs]
    assert final == [callback.tracker.run_id], final  # a run of its own, with the evaluate after it
    assert [r.phase for r in after[final[0]] if r.phase != "other"] == ["validation", "train"] * 2 + ["test"]


def hyperband(out: Path) -> None:
    """Hyperband (max_epochs=4, factor=2): the trials of its later brackets continue another trial's
    weights in a new model from ``initial_epoch`` > 0. Each trial is a run of its own, of the epochs
    it trained; none continues the run of the trial fitted before it (the one named in
    energy-state.json), which put 5 trials' epochs into 2 others' runs, as attempts, with 2 warnings."""
    energy = out / "energy"
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0, output_dir=energy)
    tuner = keras_tuner.Hyperband(builder(), objective="val_loss", max_epochs=4, factor=2, hyperband_iterations=1, seed=1,
                                  directory=str(out / "tuner"), project_name="hyperband")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.search(X, Y, batch_size=BATCH, validation_data=(XV, YV), callbacks=[callback], verbose=0)
    said = energy_warnings(caught)
    assert said == [], said
    trials = sorted(tuner.oracle.trials.values(), key=lambda trial: trial.trial_id)
    continued = [t for t in trials if t.hyperparameters.values["tuner/initial_epoch"] > 0]
    assert continued and all(t.status == "COMPLETED" for t in trials)
    runs = check_every_run(energy)
    assert len(runs) == len(trials), (len(runs), len(trials))  # KerasTuner runs its trials one by one
    for trial, records in zip(trials, runs.values()):
        hp = trial.hyperparameters.values
        assert [r.epoch for r in records if r.phase == "train"] == list(range(hp["tuner/initial_epoch"], hp["tuner/epochs"])), hp
    # The report never pools trials begun at other epochs (a trial going on from epoch 2 is no repeat of one from 0).
    first_epochs = {run_id: min(r.epoch for r in records if r.phase == "train") for run_id, records in runs.items()}
    for _, group in group_runs(read_records(energy / "energy-records.jsonl")):
        assert len({first_epochs[r.run_id] for r in group}) == 1, sorted({r.run_id for r in group})
    # Each configuration says its steps, those of trials begun past epoch 0 too (they were left out).
    configurations = json.loads(render(read_records(energy / "energy-records.jsonl"), "json"))["configurations"]
    assert all(f"of {TRAIN} samples in {-(-TRAIN // BATCH)} steps each" in c["description"] for c in configurations), \
        [c["description"] for c in configurations]


def search_given_a_run_id(out: Path) -> None:
    """A callback given ``run_id=`` in a search of 2 trials of 2 executions: each execution is the run
    ``<run_id>-trial-<trial id>`` (its second ``-2``), without a word; the given id, taken again by
    every execution, was renamed ``<id>-N`` with one warning each. A fit of the callback afterwards
    is the run of the given id."""
    energy = out / "energy"
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0,
                              output_dir=energy, run_id="search")
    tuner = keras_tuner.RandomSearch(builder(), objective="val_loss", max_trials=2, executions_per_trial=2, seed=1,
                                     directory=str(out / "tuner"), project_name="named")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.search(X, Y, epochs=1, batch_size=BATCH, validation_data=(XV, YV), callbacks=[callback], verbose=0)
        model = tuner.hypermodel.build(tuner.get_best_hyperparameters(1)[0])
        model.fit(X, Y, epochs=1, batch_size=BATCH, callbacks=[callback], verbose=0)
    said = energy_warnings(caught)
    assert said == [], said
    runs = check_every_run(energy)
    trial_ids = sorted(tuner.oracle.trials)
    expected = [f"search-trial-{t}{suffix}" for t in trial_ids for suffix in ("", "-2")] + ["search"]
    assert list(runs) == expected, (list(runs), expected)

run_scenarios(globals())
