"""The Keras adapter's sample counts past what the loss tracker counts exactly.

Keras counts training and evaluation samples in its loss tracker's ``count``, a float of
``keras.config.floatx()`` that grows a batch at a time: exact below 2**24 in float32, 2048 in
float16, 256 in bfloat16. Past that it stops growing, drops whole batches or reaches inf, and the
adapter must record the phase as uncounted (one warning saying why), never a rounded count marked
exact and never a failed hook. ``set_floatx`` is process-wide and Keras fixes its backend at first
import, so each backend runs the script below in a process of its own, as ``test_keras.py`` does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_runs import TOKENS_METRIC, run_keras

pytestmark = pytest.mark.slow

TRAIN, VAL, TEST, BATCH = 300, 290, 270, 25  # each past bfloat16's 256; odd batches round there
OVERFLOW, OVERFLOW_BATCH = 70_000, 2048  # past float16's largest finite value, 65504

SCRIPT = r"""
import json, math, os, sys, warnings
from pathlib import Path
import keras, numpy as np
from greencallbacks.keras import EnergyCallback
from greencallbacks.meter import EnergyWarning
from greencallbacks.records import read_records

OUT = Path(sys.argv[1])
TRAIN, VAL, TEST, BATCH, OVERFLOW, OVERFLOW_BATCH = (int(a) for a in sys.argv[2:8])
rng = np.random.default_rng(0)
results = {}


def model():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    return m


def data(n):
    return rng.random((n, 4), dtype=np.float32), rng.random((n, 1), dtype=np.float32)


def nan_to_none(values):
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def scenario(name, floatx, run, build=model):
    keras.config.set_floatx(floatx)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback = EnergyCallback(output_dir=OUT / name, intensity=100.0)
            history = run(build(), callback)
    finally:
        keras.config.set_floatx("float32")
    results[name] = {
        "records": [{"phase": r.phase, "epoch": r.epoch, "samples": r.samples, "counted": r.samples_counted,
                     "per_sample": r.energy_j_per_sample} for r in read_records(OUT / name) if r.phase != "other"],
        "history": {k: nan_to_none(v) for k, v in history.history.items() if "energy" in k},
        "warnings": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)],
    }


def fit_validate_evaluate(m, callback):
    x, y = data(TRAIN)
    history = m.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, validation_data=data(VAL), callbacks=[callback])
    m.evaluate(*data(TEST), batch_size=BATCH, verbose=0, callbacks=[callback])
    return history


def overflow(validation):
    def run(m, callback):
        x, y = data(OVERFLOW)
        return m.fit(x, y, batch_size=OVERFLOW_BATCH, epochs=1, verbose=0, callbacks=[callback],
                     validation_data=data(VAL) if validation else None)
    return run


def empty(as_dataset):
    def run(m, callback):
        x, y = np.zeros((0, 4), np.float32), np.zeros((0, 1), np.float32)
        if as_dataset:
            import tensorflow as tf
            return m.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0, callbacks=[callback])
        return m.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    return run


class OwnMetrics(keras.Model):  # its `metrics` lists its own metric only: Keras never resets its loss tracker

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.extra = keras.metrics.Mean(name="extra")

    def call(self, x):
        return self.dense(x)

    @property
    def metrics(self):
        return [self.extra]


def own_metrics():
    m = OwnMetrics()
    m.compile(optimizer="sgd", loss="mse")
    return m


class ResetEvery3(keras.callbacks.Callback):  # model.reset_metrics() after every third batch of one loop

    def __init__(self, loop):
        super().__init__()
        self.loop = loop

    def on_train_batch_end(self, batch, logs=None):
        if self.loop == "train" and batch % 3 == 2:
            self.model.reset_metrics()

    def on_test_batch_end(self, batch, logs=None):
        if self.loop == "test" and batch % 3 == 2:
            self.model.reset_metrics()


def resets(m, callback):
    x, y = data(97)  # 7 batches of 16, the last of 1: 1 sample counted after the last reset
    history = m.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=data(VAL),
                    callbacks=[callback, ResetEvery3("train")])
    m.evaluate(x, y, batch_size=16, verbose=0, callbacks=[callback, ResetEvery3("test")])
    return history


def batches_of_one(m, callback):
    return m.fit(*data(10), batch_size=1, epochs=2, verbose=0, validation_data=data(6), callbacks=[callback])


def executing_4_steps():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    return m


def from_generator(m, callback):
    # 5 batches of 2 from a data set of unknown length with a static batch size: Keras's compiled
    # step runs out of data inside its last call, where it counted a 6th batch (12 samples).
    import tensorflow as tf

    def batches():
        def gen():
            for i in range(5):
                yield np.full((2, 4), i, np.float32), np.zeros((2, 1), np.float32)
        spec = (tf.TensorSpec((2, 4), tf.float32), tf.TensorSpec((2, 1), tf.float32))
        return tf.data.Dataset.from_generator(gen, output_signature=spec)

    history = m.fit(batches(), epochs=2, verbose=0, validation_data=batches(), callbacks=[callback])
    m.evaluate(batches(), verbose=0, callbacks=[callback])
    return history


def unknown_length(kind):
    # 20 training samples in batches of 6 (the last of 2); validation of unknown length at one step
    # per execution, whose compiled step runs out of data inside its last call.
    def run(m, callback):
        import tensorflow as tf

        x, y = data(20)
        vx, vy = data(7)
        epochs = 2
        if kind == "generator":  # batches of 3, the last of 1; a generator runs once: one epoch
            val, epochs = ((vx[i:i + 3], vy[i:i + 3]) for i in range(0, 7, 3)), 1
        elif kind == "filtered":  # .filter() before .batch(3): the last batch of 1, a size no shape fixes
            val = tf.data.Dataset.from_tensor_slices((vx, vy)).filter(lambda a, b: True).batch(3)
        elif kind == "static":  # 2 batches of 3 fixed in the shape: the call that ran out counted a 3rd
            val = tf.data.Dataset.from_tensor_slices((vx[:6], vy[:6])).batch(3, drop_remainder=True)
            val = val.filter(lambda a, b: True)
        else:  # "train_filtered": training itself of unknown length, 19 samples by 6, the last of 1
            x = tf.data.Dataset.from_tensor_slices(data(19)).filter(lambda a, b: True).batch(6)
            return m.fit(x, epochs=epochs, verbose=0, validation_data=(vx, vy), callbacks=[callback])
        return m.fit(x, y, batch_size=6, epochs=epochs, verbose=0, validation_data=val, callbacks=[callback])
    return run


scenario("own_metrics", "float32", fit_validate_evaluate, build=own_metrics)
scenario("resets", "float32", resets)
if keras.backend.backend() != "torch":  # steps_per_execution must be 1 on torch
    scenario("steps_per_execution", "float32", batches_of_one, build=executing_4_steps)
if keras.backend.backend() == "tensorflow":
    scenario("from_generator", "float32", from_generator)
    for kind in ("generator", "filtered", "static", "train_filtered"):
        scenario(f"unknown_length_{kind}", "float32", unknown_length(kind))
if keras.backend.backend() == "tensorflow":  # Keras raises on an empty fit on the other backends
    for name, as_dataset in (("empty_arrays", False), ("empty_dataset", True)):
        try:
            scenario(name, "float32", empty(as_dataset=as_dataset))
        except TypeError:  # Keras 3.3's own fit fails on no step ("'NoneType' object is not iterable")
            pass
scenario("bfloat16", "bfloat16", fit_validate_evaluate)
scenario("float16_overflow", "float16", overflow(validation=True))
scenario("float16_overflow_no_validation", "float16", overflow(validation=False))

results["keras"], results["backend"] = keras.__version__, keras.backend.backend()
(OUT / "results.json").write_text(json.dumps(results))
"""


RULE_SCRIPT = r"""
import json, math
import keras
from greencallbacks.keras import EnergyCallback
from greencallbacks.keras._counts import _exact_count


def model():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    return m


# The rule itself, per dtype, and as read from a real loss tracker's count variable.
rule = {}
for dtype, limit in (("bfloat16", 2**8), ("float16", 2**11), ("float32", 2**24), ("float64", 2**53)):
    rule[dtype] = [_exact_count(float(limit - 1), dtype), _exact_count(float(limit), dtype)]
rule["odd"] = [_exact_count(math.inf, "float16"), _exact_count(math.nan, "float32"), _exact_count(2.5, "float32"),
               _exact_count(-1.0, "float32"), _exact_count(10.0, "int32")]
seen = {}
for floatx, values in (("float32", (2**24 - 1, 2**24)), ("bfloat16", (255, 256)), ("float16", (2047, math.inf))):
    keras.config.set_floatx(floatx)
    try:
        m, callback = model(), EnergyCallback(output_dir="unit-energy", intensity=100.0)
        callback.set_model(m)
        seen[floatx] = []
        for value in values:
            m._loss_tracker.count.assign(value)
            seen[floatx].append(callback._samples_seen())
    finally:
        keras.config.set_floatx("float32")
# Keras's conventions per version, and a version string not understood (taken for the newest).
from greencallbacks.keras._backend import hooks_report_last_step, keras_version, may_run_past_the_data
from greencallbacks.keras._counts import _step_range
versions = {v: keras_version(v) for v in ("3.3.3", "3.10.0", "3.15.1", "4.0.0rc1", "nightly")}
conventions = {
    v: [hooks_report_last_step(t), [may_run_past_the_data("tensorflow", t, k, eager) for k, eager in ((1, False), (4, False), (1, True))],
        may_run_past_the_data("jax", t, 1, False)]
    for v, t in versions.items()
}
print(json.dumps({"rule": rule, "seen": seen, "conventions": conventions,
                  "range": [_step_range(12, 4, 10), _step_range(12, 4, None), _step_range(0, 4, 10), _step_range(3, 3, None)]}))
"""


@pytest.fixture(scope="module", params=["torch", "tensorflow", "jax"])
def results(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"keras-counts-{request.param}")
    sizes = (str(n) for n in (TRAIN, VAL, TEST, BATCH, OVERFLOW, OVERFLOW_BATCH))
    return run_keras(request.param, out, "-c", SCRIPT, str(out), *sizes,
                     purpose=f"the Keras {request.param}-backend count scenarios")


def phases(result) -> list[str]:
    return [r["phase"] for r in result["records"]]


def assert_uncounted_and_said_why(result, dtype: str, phases=("train", "validation", "test")) -> None:
    for record in result["records"]:
        if record["phase"] in phases:
            assert record["counted"] is False and record["per_sample"] is None, record  # never a rounded count
    assert not [w for w in result["warnings"] if "failed" in w], result["warnings"]  # no hook failed
    counting = [w for w in result["warnings"] if "could not count" in w]
    assert len(counting) == 1, result["warnings"]  # one per run
    assert f"loss tracker's {dtype} count" in counting[0] and "samples_per_epoch=" in counting[0], counting


def test_a_bfloat16_count_past_256_is_uncounted_not_stuck(results):
    result = results["bfloat16"]
    assert phases(result) == ["validation", "train", "validation", "train", "test"]  # validation kept apart
    assert_uncounted_and_said_why(result, "bfloat16")
    history = result["history"]
    assert history["energy_j_per_sample"] == [None, None] and history["val_energy_j_per_sample"] == [None, None]
    assert all(v > 0 for v in history["energy_kwh"] + history["val_energy_kwh"])


def test_a_float16_count_that_overflows_keeps_validation_apart_and_the_train_record_its_own(results):
    # The count reaches inf: reading it must not fail the hook that begins validation (its energy
    # would go to training) nor let the training record take validation's count.
    result = results["float16_overflow"]
    assert phases(result) == ["validation", "train"]
    assert_uncounted_and_said_why(result, "float16", phases=("train",))
    (validation,) = [r for r in result["records"] if r["phase"] == "validation"]
    assert validation["samples"] == VAL and validation["counted"]  # reset before it: below 2048, exact
    assert result["history"]["energy_j_per_sample"] == [None] and result["history"]["energy_kwh"][0] > 0


def test_a_float16_count_that_overflows_without_validation_still_logs_the_epoch(results):
    result = results["float16_overflow_no_validation"]
    assert phases(result) == ["train"]
    assert_uncounted_and_said_why(result, "float16")
    assert result["history"]["energy_j_per_sample"] == [None] and result["history"]["energy_kwh"][0] > 0


@pytest.fixture(scope="module")
def rule_results(tmp_path_factory):
    """RULE_SCRIPT's findings, on Keras's torch backend in a process of its own."""
    for module in ("keras", "torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the check of the counting rule runs on Keras's torch backend")
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", RULE_SCRIPT], cwd=tmp_path_factory.mktemp("rule"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_count_is_exact_only_below_its_dtypes_exact_integer_range(rule_results):
    results = rule_results
    rule = results["rule"]
    assert rule["bfloat16"] == [255, None] and rule["float16"] == [2047, None]
    assert rule["float32"] == [2**24 - 1, None] and rule["float64"] == [2**53 - 1, None]
    assert rule["odd"] == [None] * 5  # inf, NaN, a fraction, negative, a dtype not known
    # Read from a real loss tracker, whose count takes floatx.
    assert results["seen"] == {"float32": [2**24 - 1, None], "bfloat16": [255, None], "float16": [2047, None]}


def test_keras_conventions_per_version_and_an_unknown_version_taken_for_the_newest(rule_results):
    """Batch hooks at an execution's last step from 3.11; a compiled TensorFlow step that may count
    steps without data: one step per execution in every release, several before 3.7, never eager
    nor off TensorFlow. A version string not understood follows the newest Keras."""
    results = rule_results
    newest = [True, [True, False, False], False]
    assert results["conventions"] == {
        "3.3.3": [False, [True, True, False], False], "3.10.0": [False, [True, False, False], False],
        "3.15.1": newest, "4.0.0rc1": newest, "nightly": newest,
    }
    # The steps run, read by the Keras installed here: 12 reported by 4 per execution (10 planned,
    # or not known), none reported, 3 reported by 3.
    from importlib import metadata

    if tuple(int(p) for p in metadata.version("keras").split(".")[:2]) >= (3, 11):  # the last step reported
        assert results["range"] == [[9, 10], [9, 12], [0, 0], [1, 3]], results["range"]
    else:  # the first step reported
        assert results["range"] == [[10, 10], [12, 15], [0, 0], [3, 5]], results["range"]


def test_a_loss_tracker_left_out_of_the_models_metrics_is_uncounted_not_a_growing_count(results):
    """A subclass whose `metrics` lists its own metrics only: Keras resets just those, so the loss
    tracker counted on across epochs and evaluations (train 300, 890, validation 590, 1180, test
    1450, marked counted, before the fix; on JAX its count stayed 0, uncounted, blamed on a custom step)."""
    result = results["own_metrics"]
    assert phases(result) == ["validation", "train", "validation", "train", "test"]
    assert all(r["counted"] is False and r["per_sample"] is None for r in result["records"]), result["records"]
    (said,) = [w for w in result["warnings"] if "could not count" in w]
    assert "leaves out its loss tracker" in said and "samples_per_epoch=" in said, said
    assert not [w for w in result["warnings"] if "failed" in w], result["warnings"]


def test_a_count_below_the_steps_run_is_uncounted(results):
    """A callback calling model.reset_metrics() every 3 batches: 97 samples in 7 steps counted 1
    (the last batch), marked exact, before the fix. Validation, not reset, stays exact. Training
    from NumPy arrays counts its batches (7 ended, Keras's batches of 16): 97, exact."""
    result = results["resets"]
    counted = [(r["phase"], r["samples"] if r["counted"] else None) for r in result["records"]]
    assert counted == [("validation", VAL), ("train", 97), ("validation", VAL), ("train", 97), ("test", None)], counted
    (said,) = [w for w in result["warnings"] if "could not count" in w]
    assert "fewer samples than the 7 steps" in said and "reset_metrics()" in said, said


def keras_before(results, version: tuple[int, int]) -> bool:
    return tuple(int(p) for p in results["keras"].split(".")[:2]) < version


def test_batches_of_one_sample_stay_counted_with_several_steps_per_execution(results):
    """The count equals the steps run there: no reset for the guard above to find. 10 and 6
    batches do not fill the last execution of 4: Keras before 3.7 on TensorFlow runs it as a whole
    one that raises from inside when the data runs out, having counted steps without data (train
    11, validation 8, recorded exact before the fix): uncounted there, said why."""
    if "steps_per_execution" not in results:
        pytest.skip("steps_per_execution must be 1 on the torch backend")
    result = results["steps_per_execution"]
    counted = [(r["phase"], r["samples"] if r["counted"] else None) for r in result["records"]]
    if results["backend"] == "tensorflow" and keras_before(results, (3, 7)):
        assert counted == [("validation", None), ("train", None)] * 2, counted
        (said,) = result["warnings"]
        assert "ran out of data inside a call" in said, said
        return
    assert counted == [("validation", 6), ("train", 10)] * 2, counted
    assert result["warnings"] == [], result["warnings"]


def test_a_data_set_of_unknown_length_run_past_its_end_is_uncounted(results):
    """steps_per_execution=1 on TensorFlow (every release up to 3.15): the compiled step that finds
    the data ended had already counted a batch of the static batch size, 12 of 10 samples (and the
    optimizer's step 6 of 5), recorded exact before the fix."""
    if "from_generator" not in results:
        pytest.skip("a tf.data data set runs on the tensorflow backend")
    result = results["from_generator"]
    counted = [(r["phase"], r["samples"] if r["counted"] else None) for r in result["records"]]
    assert counted == [("validation", None), ("train", None)] * 2 + [("test", None)], counted
    assert all(r["per_sample"] is None for r in result["records"])
    (said,) = [w for w in result["warnings"] if "could not count" in w]  # one per run
    assert "ran out of data inside a call" in said and "steps_per_execution=1" in said, said


@pytest.mark.parametrize("kind", ["generator", "filtered", "static", "train_filtered"])
def test_validation_of_unknown_length_leaves_the_training_epoch_counted(results, kind):
    """steps_per_execution=1 on TensorFlow: validation that runs out of data inside a compiled call
    left each training epoch of 20 samples uncounted too (since d442007), though training's count
    was complete before validation began. A count that the calls begun (ended + 1) do not divide
    holds no step without data: exact (7 in 3 batches, the last of 1; training 19 in 4). Batches
    of 3 fixed in the data set's shape may have counted a 3rd, 9 for 6: validation alone is
    uncounted, and the warning says so."""
    if f"unknown_length_{kind}" not in results:
        pytest.skip("a tf.data data set runs on the tensorflow backend")
    result = results[f"unknown_length_{kind}"]
    counted = [(r["phase"], r["samples"] if r["counted"] else None) for r in result["records"]]
    said = [w for w in result["warnings"] if "could not count" in w]
    assert not [w for w in result["warnings"] if "failed" in w], result["warnings"]
    if kind == "static":
        assert counted == [("validation", None), ("train", 20)] * 2, counted
        (said,) = said
        assert "could not count the validation samples" in said and "ran out of data inside a call" in said, said
    else:
        train = 19 if kind == "train_filtered" else 20
        assert counted == [("validation", 7), ("train", train)] * (1 if kind == "generator" else 2), counted
        assert said == [], said
    for record in result["records"]:
        assert (record["per_sample"] is not None) == record["counted"], record


@pytest.mark.parametrize("scenario", ["empty_arrays", "empty_dataset"])
def test_an_epoch_that_ran_no_step_trained_no_sample(results, scenario):
    """An empty data set on TensorFlow: no step runs, yet the loss tracker still held a count of 32,
    taken as 32 samples an epoch, counted (arrays); or the epoch was uncounted with a warning that
    blamed a custom train_step (a data set)."""
    if scenario not in results:
        pytest.skip("Keras itself refuses an empty fit on this backend")
    result = results[scenario]
    assert [(r["phase"], r["samples"], r["counted"]) for r in result["records"]] == [("train", 0, True)] * 2
    assert all(r["per_sample"] is None for r in result["records"])
    assert not [w for w in result["warnings"] if "could not count" in w or "failed" in w], result["warnings"]


TOKEN_SCRIPT = r"""
import json, math, sys, warnings
import keras, numpy as np
from greencallbacks.keras import EnergyCallback
from greencallbacks.meter import EnergyWarning


""" + TOKENS_METRIC + r"""


rng = np.random.default_rng(0)
data = lambda n: (rng.random((n, 4), dtype=np.float32), rng.random((n, 1), dtype=np.float32))
out = {}
for name in ("tokens_seen", "tokens"):  # absent from the logs; present
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse", metrics=[Ones()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback = EnergyCallback(output_dir=sys.argv[1] + "/" + name, intensity=100.0, token_counter=name)
        history = m.fit(*data(32), batch_size=8, epochs=2, verbose=0, validation_data=data(16), callbacks=[callback])
        m.evaluate(*data(16), batch_size=8, verbose=0, callbacks=[callback])
    out[name] = {
        "per_token": [None if math.isnan(v) else v for v in history.history["energy_j_per_token"]],
        "warnings": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "token" in str(w.message)],
    }
print(json.dumps(out))
"""


def test_a_token_counter_naming_no_metric_in_the_logs_is_warned_of_once_naming_the_keys(tmp_path):
    """token_counter="tokens_seen" with no such metric gave energy_j_per_token NaN, silently; the
    Lightning and HF callbacks warn of an unusable counter, once per run, in these words."""
    for module in ("keras", "torch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the token check runs on Keras's torch backend")
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", TOKEN_SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.splitlines()[-1])
    missing = results["tokens_seen"]
    assert missing["per_token"] == [None, None]
    (said,) = missing["warnings"]  # once for the run: two epochs, two validations and an evaluate
    assert "EnergyCallback token_counter 'tokens_seen' is not among the metrics in logs (loss, tokens" in said, said
    assert "its tokens are left out of energy_j_per_token (this warning comes once per run). Fix token_counter=" in said
    present = results["tokens"]
    assert present["warnings"] == [] and all(v > 0 for v in present["per_token"]), present
    # The records say which phases' token count failed, as the other callbacks' records do.
    from greencallbacks.records import read_records

    counted = {name: {(r.phase, r.tokens_counted) for r in read_records(tmp_path / name) if r.phase != "other"}
               for name in ("tokens_seen", "tokens")}
    assert counted == {name: {(phase, name == "tokens") for phase in ("train", "validation", "test")}
                       for name in ("tokens_seen", "tokens")}, counted
