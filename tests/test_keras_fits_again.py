"""A model fitted again on real Keras (torch backend): after a ``BackupAndRestore`` resume, and in
a loop of ``fit(epochs=1)``.

* A fit resumed from Keras's backup that ends normally: Keras deletes its backup as the fit ends,
  and the callback's ``energy-state-backup-<digest>.json`` went with it no more (it stayed in the
  output directory for good). It goes once Keras's backup is gone, and only then: a fit that
  raises after its last epoch keeps both, and the resume from them continues the run.
* The step: Keras keeps the optimizer's step over fits of one compiled model, so the second
  ``fit(epochs=1)`` of a loop ends its epoch 0 at step 8 after 4 steps. The run's first record
  ended at step None, and the report, which counts a run's steps from 0, read 8 steps per epoch.

This file is also the script run in Keras's own process (``python test_keras_fits_again.py``):
Keras fixes its backend at first import, so the test itself never imports Keras.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if __name__ != "__main__":
    from keras_runs import run_keras

    pytestmark = pytest.mark.slow

SCENARIOS = ["resumed_fit_ends", "fit_raises_after_its_last_epoch", "backup_kept_by_keras", "fit_in_a_loop"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras-fits-again")
    return run_keras("torch", out, str(Path(__file__).resolve()), str(out), ",".join(SCENARIOS),
                     purpose="the Keras fit-again scenarios")


def test_a_resumed_fit_that_ends_deletes_the_backup_state_with_kerass_backup(results):
    assert results["resumed_fit_ends"] == "ok", results["resumed_fit_ends"]


def test_a_fit_that_raises_after_its_last_epoch_keeps_the_backup_state_its_resume_reads(results):
    assert results["fit_raises_after_its_last_epoch"] == "ok", results["fit_raises_after_its_last_epoch"]


def test_a_backup_that_keras_keeps_keeps_its_state(results):
    assert results["backup_kept_by_keras"] == "ok", results["backup_kept_by_keras"]


def test_each_fit_of_a_loop_records_the_step_its_training_began_at(results):
    assert results["fit_in_a_loop"] == "ok", results["fit_in_a_loop"]


# ------------------------------------------------------------------------------ the script
def _script(out: Path, scenarios: list[str]) -> None:
    import json
    import time
    import traceback

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # for flow_invariants
    import keras
    import numpy as np

    from flow_invariants import check_run, logged_total_matches, meter_threads
    from greencallbacks import report, watch
    from greencallbacks.keras import EnergyCallback
    from tests.fakes.scripted import ScriptedSensor

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8), dtype=np.float32), rng.random((64, 1), dtype=np.float32)  # 4 batches of 16

    def model() -> keras.Model:
        built = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        built.compile(optimizer="sgd", loss="mse")
        return built

    def callback(directory: Path) -> EnergyCallback:
        return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                              output_dir=directory)

    def fit(callbacks: list, **kwargs):
        return model().fit(x, y, batch_size=16, verbose=0, callbacks=callbacks, **kwargs)

    def backup_states(directory: Path) -> list[str]:
        watch.settle()  # the deletion waits for the fit to return (the watch thread)
        return sorted(p.name for p in directory.glob("energy-state-backup-*.json"))

    class Raise(keras.callbacks.Callback):
        def __init__(self, hook: str, epoch: int = 0) -> None:
            super().__init__()
            self.hook, self.epoch = hook, epoch

        def on_epoch_begin(self, epoch, logs=None):
            if self.hook == "epoch" and epoch == self.epoch:
                raise RuntimeError("crash")

        def on_train_end(self, logs=None):
            if self.hook == "train_end":
                raise RuntimeError("a logger failing as the fit ends")

    def crash_then_resume(directory: Path, **restorer):
        """A fit with a BackupAndRestore that raises in epoch 2, then its resume (a new model and
        callback, as in a new process) to the end: the callback, its run id, History."""
        backup = str(directory / "backup")
        first = callback(directory)
        try:
            fit([first, keras.callbacks.BackupAndRestore(backup, **restorer), Raise("epoch", 2)], epochs=4)
        except RuntimeError:
            pass
        assert len(backup_states(directory)) == 1, backup_states(directory)  # the crashed fit's
        resumed = callback(directory)
        history = fit([resumed, keras.callbacks.BackupAndRestore(backup, **restorer)], epochs=4)
        assert history.epoch == [2, 3], history.epoch
        assert resumed.tracker.run_id == first.tracker.run_id
        return resumed, history

    def resumed_fit_ends(directory: Path) -> None:
        resumed, history = crash_then_resume(directory)
        assert not (directory / "backup").exists()  # Keras deleted its backup
        assert backup_states(directory) == []  # stayed: energy-state-backup-<digest>.json
        records = check_run(resumed.tracker.run_id, [directory], power_w=50.0)
        logged_total_matches(records, history.history["energy_kwh_total"][-1], rel=1e-9, context="resumed")
        # What a later resume needs is still there: the run goes on from energy-state.json.
        later = callback(directory)
        fit([later], epochs=5, initial_epoch=4)
        assert later.tracker.run_id == resumed.tracker.run_id
        assert [r.epoch for r in check_run(later.tracker.run_id, [directory]) if r.phase == "train" and not r.partial] \
            == [0, 1, 2, 3, 4]

    def fit_raises_after_its_last_epoch(directory: Path) -> None:
        backup = str(directory / "backup")
        first = callback(directory)
        try:  # after the energy callback's on_train_end, before BackupAndRestore's: the fit raised
            fit([first, Raise("train_end"), keras.callbacks.BackupAndRestore(backup)], epochs=2)
        except RuntimeError:
            pass
        assert (directory / "backup").exists()
        assert len(backup_states(directory)) == 1, "the state its backup's resume reads was deleted"
        resumed = callback(directory)
        history = fit([resumed, keras.callbacks.BackupAndRestore(backup)], epochs=3)  # restored after epoch 1
        assert history.epoch == [2], history.epoch
        assert resumed.tracker.run_id == first.tracker.run_id
        assert backup_states(directory) == []
        # Restored from the backup of its last epoch, a fit that trains nothing; its backup goes too.
        backup = str(directory / "backup-2")
        first = callback(directory)
        try:
            fit([first, Raise("train_end"), keras.callbacks.BackupAndRestore(backup)], epochs=1)
        except RuntimeError:
            pass
        assert len(backup_states(directory)) == 1
        try:
            history = fit([callback(directory), keras.callbacks.BackupAndRestore(backup)], epochs=1)
        except UnboundLocalError:  # Keras 3.3 fails such a fit itself ('training_logs'), keeping its backup
            assert (directory / "backup-2").exists()
            return
        assert history.epoch == [], history.epoch
        assert backup_states(directory) == []

    def backup_kept_by_keras(directory: Path) -> None:
        crash_then_resume(directory, delete_checkpoint=False)
        assert (directory / "backup").exists()
        assert len(backup_states(directory)) == 1  # Keras's backup restores a later fit: its state stays

    def fit_in_a_loop(directory: Path) -> None:
        looped, energy = model(), callback(directory)
        for _ in range(3):
            history = looped.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[energy])
            records = check_run(energy.tracker.run_id, [directory], power_w=50.0)
            logged_total_matches(records, history.history["energy_kwh_total"][-1], rel=1e-9, context="loop")
            (train,) = [r for r in records if r.phase == "train"]
            assert train.samples == 64 and train.samples_counted, train
            # The run's first record ends where its training began: 0, 4, 8.
            assert train.step - records[0].step == 4, [(r.phase, r.step) for r in records]
            # ... so the report reads 4 steps an epoch in every run (it read 8, then 12).
            assert report.configuration(records)["steps_per_epoch"] == 4, [(r.phase, r.step) for r in records]

    assert keras.backend.backend() == "torch"
    by_name = {f.__name__: f for f in (resumed_fit_ends, fit_raises_after_its_last_epoch, backup_kept_by_keras,
                                       fit_in_a_loop)}
    results = {}
    for name in scenarios:
        directory = out / name
        directory.mkdir()
        try:
            by_name[name](directory)
            assert not meter_threads()
            results[name] = "ok"
        except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
            results[name] = traceback.format_exc()
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    _script(Path(sys.argv[1]), [s for s in sys.argv[2].split(",") if s])
