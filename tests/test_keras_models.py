"""The Keras adapter with one callback across models and copied while it measures, on the torch backend.

Keras fixes its backend at first import, so the script below runs in a process of its own (as in
``test_keras.py``); the tests read its records, summaries and results back. Every data set has its
own size, so each record's sample count says whose data it measured.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from greencallbacks.records import read_records

pytestmark = pytest.mark.slow

TRAIN, VAL, TEST_A, TEST_B, PREDICT_C = 37, 23, 13, 7, 5

SCRIPT = r"""
import copy, json, pickle, sys, warnings
from pathlib import Path
import keras, numpy as np
from greencallbacks.keras import EnergyCallback

OUT = Path(sys.argv[1])
TRAIN, VAL, TEST_A, TEST_B, PREDICT_C = (int(a) for a in sys.argv[2:7])
rng = np.random.default_rng(0)


def data(n):
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


X, Y = data(TRAIN)
XV, YV = data(VAL)
XA, YA = data(TEST_A)
XB, YB = data(TEST_B)
XC, _ = data(PREDICT_C)


def model():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    return m


def fit(m, callbacks):
    return m.fit(X, Y, batch_size=8, epochs=2, validation_data=(XV, YV), verbose=0, callbacks=callbacks)


def summary_of(directory, run_id):
    # energy-summary.json is the latest run's; earlier runs' are kept beside it under their id.
    for path in sorted(directory.glob("energy-summary*.json")):
        summary = json.loads(path.read_text())
        if summary.get("run_id") == run_id:
            return summary
    return None


results = {}

# One callback given to two models: each model's inference goes into its own run.
two = OUT / "two"
energy, a, b, c = EnergyCallback(intensity=100, output_dir=two), model(), model(), model()
fit(a, [energy])
results["a"] = energy.tracker.run_id
fit(b, [energy])
results["b"] = energy.tracker.run_id
results["b_summary_after_fit"] = summary_of(two, results["b"])
a.evaluate(XA, YA, batch_size=4, verbose=0, callbacks=[energy])
results["b_summary_after_a_evaluate"] = summary_of(two, results["b"])
b.evaluate(XB, YB, batch_size=4, verbose=0, callbacks=[energy])
a.predict(XA, batch_size=4, verbose=0, callbacks=[energy])
c.predict(XC, batch_size=4, verbose=0, callbacks=[energy])  # a model never trained: the current run (A's)
results["summaries"] = {name: summary_of(two, results[name]) for name in ("a", "b")}

# fit(A), fit(B), A.evaluate, then B resumed: B's later epochs go on in B's run.
switch = OUT / "switch"
energy, a, b = EnergyCallback(intensity=100, output_dir=switch), model(), model()
fit(a, [energy])
results["switch_a"] = energy.tracker.run_id
fit(b, [energy])
results["switch_b"] = energy.tracker.run_id
a.evaluate(XA, YA, batch_size=4, verbose=0, callbacks=[energy])
b.fit(X, Y, batch_size=8, epochs=4, initial_epoch=2, verbose=0, callbacks=[energy])
results["switch_resumed"] = energy.tracker.run_id


# A new callback at each call: fit(A), fit(B), then A resumed. energy-state.json names B's run.
fresh = OUT / "fresh"
a, b = model(), model()
fit(a, [EnergyCallback(intensity=100, output_dir=fresh)])
fit(b, [EnergyCallback(intensity=100, output_dir=fresh)])
resumed = EnergyCallback(intensity=100, output_dir=fresh)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    a.fit(X, Y, batch_size=8, epochs=4, initial_epoch=2, verbose=0, callbacks=[resumed])
results["fresh_resumed"] = resumed.tracker.run_id
results["fresh_warnings"] = [str(w.message) for w in caught if "greencallbacks" in str(w.message)]

# Keras 3.7 to 3.11 hand predict's logs through float(), so a batch of one sample's outputs
# arrive as plain numbers (3.12+ too, with NumPy before 2.4): as Keras 3.8 does it, on any version.
def pythonify_logs_of_keras_3_8(logs):
    result = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            result.update(pythonify_logs_of_keras_3_8(value))
        else:
            try:
                value = float(value)
            except Exception:
                pass
            result[key] = value
    return result


CallbackList = keras.callbacks.CallbackList
newest = CallbackList.on_predict_batch_end
CallbackList.on_predict_batch_end = lambda self, batch, logs=None: newest(self, batch, pythonify_logs_of_keras_3_8(logs))
energy, a = EnergyCallback(intensity=100, output_dir=OUT / "ones"), model()
fit(a, [energy])
a.predict(XA, batch_size=4, verbose=0, callbacks=[energy])  # 13: 4 + 4 + 4 + 1
a.predict(XC, batch_size=1, verbose=0, callbacks=[energy])
CallbackList.on_predict_batch_end = newest
results["ones"] = energy.tracker.run_id

# Copied (deepcopy and pickle) by another callback at the end of the fit's first epoch.
class Copier(keras.callbacks.Callback):
    def __init__(self, target):
        super().__init__()
        self.target, self.copies, self.error = target, [], None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            try:
                self.copies = [copy.deepcopy(self.target), pickle.loads(pickle.dumps(self.target))]
            except Exception as error:
                self.error = repr(error)


energy = EnergyCallback(intensity=100, output_dir=OUT / "copies")
copier = Copier(energy)
history = fit(model(), [energy, copier])
results["copy_error"] = copier.error
results["original"] = energy.tracker.run_id
results["original_history"] = history.history["energy_kwh_total"]
results["copies"] = []
for duplicate in copier.copies:
    without_model = duplicate.model is None
    fit(model(), [duplicate])
    results["copies"].append([without_model, duplicate.tracker.run_id])
json.dump(results, open(OUT / "results.json", "w"))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    for module in ("keras", "torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the Keras torch-backend scenarios need it")
    out = tmp_path_factory.mktemp("keras-models")
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    sizes = [str(n) for n in (TRAIN, VAL, TEST_A, TEST_B, PREDICT_C)]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out), *sizes], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), out


def samples(records, run_id, phase):
    return [r.samples for r in records if r.run_id == run_id and r.phase == phase]


def test_one_callback_given_two_models_keeps_each_models_inference_in_its_run(results):
    """fit(A), fit(B), then A.evaluate with the same callback: A's 13 test samples went into B's
    run (the callback's current one), and B's summary counted them."""
    result, out = results
    a, b = result["a"], result["b"]
    records = read_records(out / "two")
    assert a != b and {r.run_id for r in records} == {a, b}
    for run_id in (a, b):
        assert samples(records, run_id, "train") == [TRAIN, TRAIN]
        assert samples(records, run_id, "validation") == [VAL, VAL]
        mine = [r for r in records if r.run_id == run_id]
        assert len({r.seq for r in mine}) == len(mine)
    assert samples(records, a, "test") == [TEST_A] and samples(records, b, "test") == [TEST_B]
    # A model this process never trained continues the current run: A's, which A's predict used last.
    assert samples(records, a, "predict") == [TEST_A, PREDICT_C] and samples(records, b, "predict") == []
    # B's summary, written as its fit ended, is not rewritten by A's evaluate.
    assert result["b_summary_after_fit"] is not None
    assert result["b_summary_after_a_evaluate"] == result["b_summary_after_fit"]
    for name, run_id in (("a", a), ("b", b)):
        summary = result["summaries"][name]
        assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records if r.run_id == run_id), rel=1e-9)
    phases = {name: result["summaries"][name]["phases"] for name in ("a", "b")}
    assert phases["a"]["test"]["samples"] == TEST_A and phases["a"]["predict"]["samples"] == TEST_A + PREDICT_C
    assert phases["b"]["test"]["samples"] == TEST_B and "predict" not in phases["b"]


def test_a_model_resumed_after_another_models_evaluate_goes_on_in_its_own_run(results):
    """fit(A), fit(B), A.evaluate, B.fit(initial_epoch=2): the evaluate left A's run current, and
    B's epochs 2-3 went into A's run, without a word."""
    result, out = results
    a, b = result["switch_a"], result["switch_b"]
    records = read_records(out / "switch")
    train = {run: [(r.epoch, r.attempt) for r in records if r.run_id == run and r.phase == "train"] for run in (a, b)}
    assert result["switch_resumed"] == b
    assert train[a] == [(0, 0), (1, 0)]
    assert train[b] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert samples(records, a, "test") == [TEST_A] and samples(records, b, "test") == []


def test_a_predict_batch_of_one_sample_is_counted_where_keras_makes_its_outputs_plain_numbers(results):
    """Keras 3.7+ passes predict's logs through float(): a batch of one sample's outputs came as a
    plain float, which no counter can size, and the whole predict was recorded uncounted."""
    result, out = results
    predicts = [r for r in read_records(out / "ones") if r.run_id == result["ones"] and r.phase == "predict"]
    assert [(r.samples, r.samples_counted) for r in predicts] == [(TEST_A, True), (PREDICT_C, True)]


def test_a_model_resumed_with_a_new_callback_after_another_models_fit_goes_on_in_its_own_run(results):
    """fit(A), fit(B), then A.fit(initial_epoch=2), a new callback each: energy-state.json names B's
    run, which A's epochs 2-3 went on in, without a word (B's run then held two models' epochs);
    then they were a run of their own, with a warning. A's state is now kept under its id when B's
    run takes the file, and A's run goes on as its next attempt."""
    result, out = results
    records = read_records(out / "fresh")
    runs = list(dict.fromkeys(r.run_id for r in records))
    assert len(runs) == 2 and result["fresh_resumed"] == runs[0]
    train = {run: [(r.epoch, r.attempt) for r in records if r.run_id == run and r.phase == "train"] for run in runs}
    assert train == {runs[0]: [(0, 0), (1, 0), (2, 1), (3, 1)], runs[1]: [(0, 0), (1, 0)]}
    assert not [w for w in result["fresh_warnings"] if "resumes at epoch 2" in w or "continues run" in w]
    summary = json.loads((out / "fresh" / "energy-summary.json").read_text())
    assert summary["run_id"] == runs[0] and summary["attempts"] == 2
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records if r.run_id == runs[0]), rel=1e-9)


def test_a_copy_taken_mid_fit_is_a_fresh_callback_and_the_original_goes_on(results):
    """copy.deepcopy / pickle from another callback's on_epoch_end raised "cannot pickle
    '_thread.lock' object" (the running session was copied), failing the fit."""
    result, out = results
    assert result["copy_error"] is None
    original = result["original"]
    records = read_records(out / "copies")
    # The original measured its whole fit, in one attempt, unaffected.
    assert len(result["original_history"]) == 2
    mine = [r for r in records if r.run_id == original]
    assert [(r.epoch, r.samples, r.attempt, r.partial) for r in mine if r.phase == "train"] == [
        (0, TRAIN, 0, False), (1, TRAIN, 0, False)]
    assert samples(records, original, "validation") == [VAL, VAL]
    # Each copy came without the model and, given to a fit, measured a run of its own.
    assert len(result["copies"]) == 2
    runs = {original}
    for without_model, run_id in result["copies"]:
        assert without_model and run_id not in runs
        runs.add(run_id)
        assert samples(records, run_id, "train") == [TRAIN, TRAIN]
        assert samples(records, run_id, "validation") == [VAL, VAL]
    assert {r.run_id for r in records} == runs
