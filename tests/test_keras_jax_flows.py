"""Keras on the JAX backend: a fit that fails in epoch 2 resumed by ``BackupAndRestore`` in a new
callback (and model, as a new process builds), backed up every epoch or every 3 batches (inside an
epoch); and ``steps_per_execution=3`` over data whose steps are no multiple of 3 (the last execution
runs fewer), with validation, then evaluate and predict.

After every call: the ledger invariants (``flow_invariants.py``), the totals logged by History and
CSVLogger, and each record's samples against what Keras really ran (a callback counting the batches
of each loop); no phase of an epoch finished twice across the crash and the resume. Keras fixes its
backend at first import, so the scenarios run in a process of their own (``run_keras``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keras_runs import run_keras

pytestmark = pytest.mark.slow

SCRIPT = r'''
import csv, json, sys, time, traceback
from pathlib import Path
sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]).parent)]  # flow_invariants; tests.fakes
import keras
import numpy as np
from flow_invariants import check_run, logged_total_matches, meter_threads
from greencallbacks.keras import EnergyCallback
from tests.fakes.scripted import ScriptedSensor

assert keras.backend.backend() == "jax", keras.backend.backend()
POWER_W, TRAIN, VAL, BATCH, SMALL = 50.0, 100, 30, 32, 8  # 4 training steps (32, 32, 32, 4); 4 of 8 samples (6 last)
rng = np.random.default_rng(0)
X, Y = rng.random((TRAIN, 8), dtype=np.float32), rng.random((TRAIN, 1), dtype=np.float32)
XV, YV = rng.random((VAL, 8), dtype=np.float32), rng.random((VAL, 1), dtype=np.float32)


def tiny_model(per_execution=1):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=per_execution)
    return model


def energy(out):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0, output_dir=out)


class Ran(keras.callbacks.Callback):
    """The samples Keras ran in each (phase, epoch), from the last step index its hooks report (one
    hook per execution); the optimizer's step when the first epoch began; may raise after a batch."""

    def __init__(self, eval_batch=BATCH, fail_at=None):
        super().__init__()
        self.eval_batch, self.fail_at, self.epoch, self.samples, self.first_step = eval_batch, fail_at, None, {}, None
        self.train_hooks = []  # (epoch, last step index) of each training hook

    def _ran(self, key, step, size, total):
        self.samples[key] = max(self.samples.get(key, 0), min((step + 1) * size, total))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.first_step is None:
            self.first_step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_end(self, logs=None):
        self.epoch = None

    def on_train_batch_end(self, batch, logs=None):
        self._ran(("train", self.epoch), batch, BATCH, TRAIN)
        self.train_hooks.append((self.epoch, batch))
        if (self.epoch, batch) == self.fail_at:
            raise RuntimeError("boom")

    def on_test_batch_end(self, batch, logs=None):
        self._ran(("test", None) if self.epoch is None else ("validation", self.epoch), batch, self.eval_batch, VAL)

    def on_predict_batch_end(self, batch, logs=None):
        self._ran(("predict", None), batch, self.eval_batch, VAL)


def checked(callback, out, ran, attempt, context):
    """The run's invariants; each phase's samples in this attempt are what Keras ran."""
    assert not meter_threads(), context
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=context)
    mine = [r for r in records if r.attempt == attempt and r.phase != "other"]
    billed = {(r.phase, r.epoch): r.samples for r in mine if not r.partial}
    assert billed == {k: v for k, v in ran.samples.items() if k in billed} and set(billed) <= set(ran.samples), (billed, ran.samples, context)
    for r in mine:
        if r.partial:  # Keras counts training and evaluation only at their end: uncounted, or exact
            assert not r.samples_counted or r.samples == ran.samples.get((r.phase, r.epoch), 0), (repr(r), context)
    finished = [(r.phase, r.epoch) for r in records if not r.partial and r.phase in ("train", "validation")]
    assert len(finished) == len(set(finished)), ("an epoch billed twice", finished, context)
    return records


def last_logged(csv_path):
    return float(list(csv.DictReader(csv_path.open()))[-1]["energy_kwh_total"])


def backup_resume(out, save_freq, restored_step):
    """Fails after batch 1 of epoch 2 (of 4); a new callback and model resume through the backup."""
    ledger, results = out / "energy", {}
    for attempt, fail_at in enumerate([(2, 1), None]):
        callback, ran, log = energy(ledger), Ran(fail_at=fail_at), out / f"log{attempt}.csv"
        backup = keras.callbacks.BackupAndRestore(str(out / "backup"), save_freq=save_freq)
        try:
            history = tiny_model().fit(X, Y, batch_size=BATCH, epochs=4, validation_data=(XV, YV), verbose=0,
                                       callbacks=[callback, backup, ran, keras.callbacks.CSVLogger(str(log))])
        except RuntimeError:
            history = None
        context = f"save_freq={save_freq}, attempt {attempt}"
        assert (history is None) == (attempt == 0), context
        records = checked(callback, ledger, ran, attempt, context)
        results[attempt] = (callback.tracker.run_id, ran.first_step, sorted(ran.samples, key=str))
        logged_total_matches(records, last_logged(log), rel=1e-9, context=context + " (CSVLogger)")
        if history is not None:
            logged_total_matches(records, history.history["energy_kwh_total"][-1], rel=1e-9, context=context + " (History)")
    assert results[0][0] == results[1][0], ("the resume continues the crashed run", results)
    assert results[1][1] == restored_step, ("the step the backup restored", results)
    assert ("train", 2) in results[1][2] and ("train", 1) not in results[1][2], results  # epoch 2 run again, whole
    phases = [(r.attempt, r.phase, r.epoch, r.partial) for r in check_run(results[1][0], [ledger]) if r.phase == "train"]
    assert phases == [(0, "train", 0, False), (0, "train", 1, False), (0, "train", 2, True),
                      (1, "train", 2, False), (1, "train", 3, False)], phases


def partial_execution(out):
    """steps_per_execution=3 over 4 steps (an execution of 3, then of 1), training and evaluating."""
    callback, ran, model, log = energy(out), Ran(eval_batch=SMALL), tiny_model(per_execution=3), out / "log.csv"
    history = model.fit(X, Y, batch_size=BATCH, epochs=2, validation_data=(XV, YV), validation_batch_size=SMALL,
                        verbose=0, callbacks=[callback, ran, keras.callbacks.CSVLogger(str(log))])
    model.evaluate(XV, YV, batch_size=SMALL, verbose=0, callbacks=[callback, ran])
    assert model.predict(XV, batch_size=SMALL, verbose=0, callbacks=[callback, ran]).shape[0] == VAL
    # Two executions an epoch (3 steps, then 1); Keras 3.15 names the short one's last step 5, not 3.
    assert [epoch for epoch, _ in ran.train_hooks] == [0, 0, 1, 1], ran.train_hooks
    records = checked(callback, out, ran, 0, "steps_per_execution=3")
    assert [(r.phase, r.epoch, r.samples) for r in records if r.phase != "other"] == [
        ("validation", 0, VAL), ("train", 0, TRAIN), ("validation", 1, VAL), ("train", 1, TRAIN),
        ("test", None, VAL), ("predict", None, VAL)], records
    logged_total_matches(records, history.history["energy_kwh_total"][-1], rel=1e-9, context="History")
    logged_total_matches(records, last_logged(log), rel=1e-9, context="CSVLogger")


results = {}
for name, scenario in {"backup_every_epoch": lambda out: backup_resume(out, "epoch", restored_step=8),
                       "backup_every_3_batches": lambda out: backup_resume(out, 3, restored_step=9),
                       "partial_execution": partial_execution}.items():
    Path(name).mkdir()
    try:
        scenario(Path(name).resolve())
        results[name] = "ok"
    except BaseException:  # reported to the test, which fails with it
        results[name] = traceback.format_exc()
Path("results.json").write_text(json.dumps(results))
'''

SCENARIOS = ["backup_every_epoch", "backup_every_3_batches", "partial_execution"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras-jax-flows")
    return run_keras("jax", out, "-c", SCRIPT, str(Path(__file__).resolve().parent),
                     purpose="the Keras JAX-backend flows", timeout=300)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_jax_backup_resume_and_partial_executions_bill_exactly_what_keras_ran(results, scenario):
    assert results[scenario] == "ok", results[scenario]
