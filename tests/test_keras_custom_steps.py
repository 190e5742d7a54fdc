"""The Keras adapter with a custom ``train_step`` / ``test_step`` written as in Keras's guide to
customizing ``fit()``: the loss tracker gets the batch's loss once per step (and replica), so its
count is the steps run, never samples. The steps are known only to within a range when
``steps_per_execution`` does not divide them (Keras reports a short last execution as a whole one),
and a ``tf.distribute`` step counts once per replica: both must stay uncounted. A fit that fails in
such a last execution is labelled with the steps it ran, and the one warning per run must not say
that only the first phase found was uncounted.

``steps_per_execution`` must be 1 on the torch backend and ``MirroredStrategy`` is TensorFlow's:
those run on TensorFlow; the warning's wording on torch. Each backend runs in a process of its own
(Keras fixes its backend at first import), as in ``test_keras.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keras_runs import run_keras

pytestmark = pytest.mark.slow

TRAIN, VAL, BATCH = 154, 70, 16  # 10 training steps (the last of 10 samples), 5 validation steps

SCRIPT = r"""
import json, sys, warnings
from pathlib import Path
import numpy as np

BACKEND = sys.argv[2]
if BACKEND == "tensorflow":  # two logical CPUs for MirroredStrategy, before TensorFlow starts
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from greencallbacks import watch
from greencallbacks.keras import EnergyCallback
from greencallbacks.meter import EnergyWarning
from greencallbacks.records import read_records

OUT = Path(sys.argv[1])
TRAIN, VAL, BATCH = (int(a) for a in sys.argv[3:6])
rng = np.random.default_rng(0)
data = lambda n: (rng.random((n, 4), dtype=np.float32), rng.random((n, 1), dtype=np.float32))
results = {}


class Guide(keras.Model):
    # keras.io "Customizing what happens in fit()": the loss tracker gets the batch's loss once per
    # step; `weighted` gives it sample_weight=<batch size>, as Keras's own steps do (a count of samples).
    def __init__(self, weighted=False):
        super().__init__()
        self.dense, self.weighted = keras.layers.Dense(1), weighted

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        if BACKEND == "torch":
            import torch
            self.zero_grad()
            loss = self.compute_loss(y=y, y_pred=self(x, training=True))
            loss.backward()
            with torch.no_grad():
                self.optimizer.apply([v.value.grad for v in self.trainable_weights], self.trainable_weights)
        else:
            with tf.GradientTape() as tape:
                loss = self.compute_loss(y=y, y_pred=self(x, training=True))
            self.optimizer.apply(tape.gradient(loss, self.trainable_weights), self.trainable_weights)
        return self.update(loss, y)

    def test_step(self, data):
        x, y = data
        return self.update(self.compute_loss(y=y, y_pred=self(x, training=False)), y)

    def update(self, loss, y):
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=keras.ops.shape(y)[0] if self.weighted else None)
        return {m.name: m.result() for m in self.metrics}


def guide(weighted=False, steps_per_execution=1):
    m = Guide(weighted)
    m.compile(optimizer="sgd", loss="mse", steps_per_execution=steps_per_execution)
    return m


def measure(name, build, scope=None):
    # fit (2 epochs, validated) and evaluate: each phase's samples (None: uncounted), and the warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback = EnergyCallback(output_dir=OUT / name, intensity=100.0)
        if scope is None:
            m = build()
        else:
            with scope:
                m = build()
        m.fit(*data(TRAIN), batch_size=BATCH, epochs=2, verbose=0, validation_data=data(VAL), callbacks=[callback])
        m.evaluate(*data(VAL), batch_size=BATCH, verbose=0, callbacks=[callback])
    results[name] = {
        "samples": [[r.phase, r.samples if r.samples_counted else None] for r in read_records(OUT / name)
                    if r.phase != "other"],
        "warnings": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)],
    }


class Raise(keras.callbacks.Callback):
    # Raises in the hook of the execution numbered `at` (from 1): Keras reports an execution at its
    # last step since 3.11, at its first before, so a batch number would name another execution.
    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.calls += 1
        if self.calls >= self.at:
            raise RuntimeError("boom")


def crash(name, at):
    # Keras's own step, 3 steps per execution: the 4th, last execution runs 1 step (the 10th) and
    # is reported as batch 11 (Keras 3.11+) or 9; a callback raises in that hook.
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse", steps_per_execution=3)
    try:
        m.fit(*data(TRAIN), batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[EnergyCallback(output_dir=OUT / name, intensity=100.0), Raise(at)])
    except RuntimeError:
        pass
    watch.settle()
    (record,) = [r for r in read_records(OUT / name) if r.phase == "train"]
    results[name] = {"partial": record.partial, "step": record.step,
                     "iterations": int(keras.ops.convert_to_numpy(m.optimizer.iterations))}


if BACKEND == "tensorflow":
    for spe in (3, 4):
        measure(f"guide_spe{spe}", lambda: guide(steps_per_execution=spe))
    measure("weighted_spe3", lambda: guide(weighted=True, steps_per_execution=3))
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    measure("guide_mirrored", guide, scope=mirrored.scope())
    measure("weighted_mirrored", lambda: guide(weighted=True), scope=mirrored.scope())
    crash("crash_in_short_execution", at=4)
    crash("crash_in_full_execution", at=2)
else:
    measure("guide", guide)
results["keras"] = keras.__version__
(OUT / "results.json").write_text(json.dumps(results))
"""


def run_script(backend: str, out: Path) -> dict:
    # Once in a CI run (Keras 3.3.3, TensorFlow 2.16.2) the TensorFlow scenarios, two MirroredStrategy
    # replicas among them, hung for 600 s; not reproduced in 17 reruns: run again once on a hang.
    return run_keras(backend, out, "-c", SCRIPT, str(out), backend, str(TRAIN), str(VAL), str(BATCH),
                     purpose=f"the Keras {backend}-backend custom-step scenarios", hang_retried=backend == "tensorflow")


@pytest.fixture(scope="module")
def tf_results(tmp_path_factory):
    return run_script("tensorflow", tmp_path_factory.mktemp("keras-custom-steps-tensorflow"))


UNCOUNTED = [["validation", None], ["train", None]] * 2 + [["test", None]]
COUNTED = [["validation", VAL], ["train", TRAIN]] * 2 + [["test", VAL]]


def keras_before(results, version: tuple[int, int]) -> bool:
    return tuple(int(p) for p in results["keras"].split(".")[:2]) < version


# Before Keras 3.7 TensorFlow runs a short last execution as a whole one, which raises from inside
# when the data runs out, having counted steps without data (a guide step's count grows by 1 per
# step whatever the data): the phase is uncounted for that first, and said so.
RAN_OUT = "ran out of data inside a call"


def assert_uncounted_once(result, why: str = "once per batch") -> None:
    assert result["samples"] == UNCOUNTED, result["samples"]
    (said,) = [w for w in result["warnings"] if "could not count" in w]  # one per run
    assert why in said, said
    assert not [w for w in result["warnings"] if "failed" in w], result["warnings"]


@pytest.mark.parametrize("steps_per_execution", [3, 4])
def test_a_guide_step_with_a_short_last_execution_is_uncounted(tf_results, steps_per_execution):
    """10 training steps, 3 or 4 per execution: Keras 3.11+ reports 12 steps, and the count of 10
    was recorded as 10 exact samples (validation and evaluate: 5 of 70) before the fix. Keras 3.7
    to 3.10 report an execution at its first step (validation: 4 by 3), which the range of steps
    must follow, or the count of 5 is taken for samples; before 3.7 see RAN_OUT (it counted 11
    and 6, recorded exact before the fix)."""
    why = RAN_OUT if keras_before(tf_results, (3, 7)) else "once per batch"
    assert_uncounted_once(tf_results[f"guide_spe{steps_per_execution}"], why)


def test_a_step_weighting_by_the_batch_size_still_counts_with_a_short_last_execution(tf_results):
    result = tf_results["weighted_spe3"]
    if keras_before(tf_results, (3, 7)):  # see RAN_OUT: a custom step's count may include steps without data
        assert_uncounted_once(result, RAN_OUT)
        return
    assert result["samples"] == COUNTED, result["samples"]
    assert not [w for w in result["warnings"] if "could not count" in w], result["warnings"]


# Keras 3.7 to 3.9 mirror a metric's count on write with a sum, which counted 16362 of 154
# samples on two replicas (recorded exact before the fix): no count there, said why.
NOT_SUMMED = "does not sum the loss tracker's count over the 2 tf.distribute replicas"


def not_summed(tf_results) -> bool:
    return not keras_before(tf_results, (3, 7)) and keras_before(tf_results, (3, 10))


def test_a_guide_step_on_two_replicas_is_uncounted(tf_results):
    """MirroredStrategy on 2 replicas: each adds the step's loss, so the count is the steps times 2
    (20 for training, 10 for validation and evaluate), recorded as exact samples before the fix."""
    assert_uncounted_once(tf_results["guide_mirrored"], NOT_SUMMED if not_summed(tf_results) else "once per batch")


def test_a_step_weighting_by_the_batch_size_on_two_replicas_still_counts(tf_results):
    """Before Keras 3.7 each replica counts into its own copy of the count, and a read gives the
    first replica's: 77 of 154, 35 of 70, recorded exact before the fix; the copies are summed."""
    result = tf_results["weighted_mirrored"]
    if not_summed(tf_results):
        assert_uncounted_once(result, NOT_SUMMED)
        return
    assert result["samples"] == COUNTED, result["samples"]


def test_a_fit_failing_in_a_short_last_execution_is_labelled_with_the_steps_it_ran(tf_results):
    """The record said step 12 (the batch reported) while the optimizer had taken 10 steps; Keras
    3.7 to 3.10 report the executions at their first step (9 and 3), taken for 9 and 3 steps."""
    short, full = tf_results["crash_in_short_execution"], tf_results["crash_in_full_execution"]
    assert full == {"partial": True, "step": 6, "iterations": 6}, full  # a whole execution
    if keras_before(tf_results, (3, 7)):
        # The short last execution raises from inside (RAN_OUT) before any hook: nothing failed,
        # and the record has the optimizer's step, whatever steps without data added to it.
        assert short["partial"] is False and short["step"] == short["iterations"], short
        return
    assert short == {"partial": True, "step": 10, "iterations": 10}, short


def test_the_one_warning_of_a_run_does_not_say_only_its_first_phase_was_uncounted(tmp_path):
    """Validation ends before its training epoch, so the warning names validation; training and
    evaluate are uncounted too. It said "the record says samples_counted: false" before the fix,
    as if validation's alone did."""
    result = run_script("torch", tmp_path)["guide"]
    assert_uncounted_once(result)
    (said,) = [w for w in result["warnings"] if "could not count" in w]
    assert said.startswith("greencallbacks: could not count the validation samples"), said
    assert "as does that of every later phase of this run (training, validation, test) that cannot be counted" in said
    assert "this warning comes once per run" in said and "samples_per_epoch=" in said, said
