"""A Keras training epoch over NumPy arrays cut short where its batches do not simply fill it: with
``steps_per_epoch`` (an epoch runs on where the last one stopped in the pass over the arrays, and
ends at the pass's end, its short last batch) and with ``steps_per_execution`` > 1 (a batch hook
covers several steps). Its partial record carries the samples of the batches whose end hooks ran,
the same as its tokens, or says ``samples_counted: false`` where they are not known (Keras 3.15
runs an epoch of 3 steps by 2 to 4 steps: then where the next one begins is not known). Each
backend in a process of its own (Keras fixes it at import); torch has no ``steps_per_execution``.
"""

from __future__ import annotations

import pytest

from keras_runs import TOKENS_METRIC, run_keras_code

pytest.importorskip("keras")


# The scripts' common part: a tokens metric, and a callback that raises in a batch hook (after ours).
PRELUDE = r"""
import json, os, sys, tempfile
import keras, numpy as np
from greencallbacks import watch
from greencallbacks.keras import EnergyCallback
from greencallbacks.records import read_records


""" + TOKENS_METRIC + r"""


class Breaks(keras.callbacks.Callback):  # raises as epoch `epoch`'s batch `batch` (or, unless exact, later) begins or ends
    def __init__(self, epoch, batch, hook, exact=False):
        super().__init__()
        self.at, self.hook, self.exact, self.epoch = (epoch, batch), hook, exact, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _breaks(self, hook, batch):
        at_batch = batch == self.at[1] if self.exact else batch >= self.at[1]
        if self.hook == hook and self.epoch == self.at[0] and at_batch:
            raise RuntimeError("broken batch")

    def on_train_batch_begin(self, batch, logs=None):
        self._breaks("begin", batch)

    def on_train_batch_end(self, batch, logs=None):
        # (An execution's end hook gets its last step in Keras 3.11+, its first before.)
        self._breaks("end", batch)


"""

SCRIPT = PRELUDE + r"""
rng = np.random.default_rng(0)
x, y = rng.random((100, 4), dtype=np.float32), rng.random((100, 1), dtype=np.float32)  # passes of 32, 32, 32, 4
torch = keras.backend.backend() == "torch"
out = {"version": [int(part) for part in keras.__version__.split(".")[:2]]}
for kind, steps, per_execution, epoch, batch, hook in (
        ("pass_end", 2, 1, 3, 1, "end"),      # epochs of 32+32, 32+4, 32+32, 32+4: the 4th ends its pass
        ("mid_pass", 2, 1, 3, 1, "begin"),    # the 4th cut short after its first batch
        ("last_of_pass", 3, 1, 1, 0, "end"),  # epochs of 32+32+32, 4, ...: the 2nd is the pass's last batch
        ("by_2", None, 2, 1, 2, "begin"),     # executions of 2 steps: the 2nd cut short before its 2nd
        ("by_3", None, 3, 1, 3, "end"),       # executions of 3 steps: 3 of 32 and 1 of 4, both ended
        ("by_2_of_3", 3, 2, 1, 2, "begin")):  # Keras 3.15 runs each epoch of 3 steps by 2 to 4 steps
    if torch and per_execution > 1:
        continue
    directory = tempfile.mkdtemp(dir=sys.argv[1])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=[Ones()], steps_per_execution=per_execution)
    try:
        model.fit(x, y, batch_size=32, steps_per_epoch=steps, epochs=5, verbose=0, shuffle=False,
                  callbacks=[EnergyCallback(output_dir=directory, intensity=100.0, token_counter="tokens"),
                             Breaks(epoch, batch, hook)])
    except RuntimeError:
        pass
    watch.settle()
    records = [r for r in read_records(directory) if r.phase == "train"]
    summary = json.load(open(os.path.join(directory, "energy-summary.json")))["phases"]["train"]
    out[kind] = {"records": [(r.epoch, r.partial, r.samples, r.samples_counted, r.tokens) for r in records],
                 "summary": [summary["samples"], sum(r.samples for r in records)]}
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_an_epoch_cut_short_counts_the_samples_of_its_pass_and_executions(tmp_path, backend):
    """Regression: an epoch cut short with ``steps_per_epoch`` over arrays of 100 in batches of 32
    recorded ``samples: 0, samples_counted: false`` (36, 32 and 4 trained), and so did one with
    ``steps_per_execution`` 2 or 3 (64 and 100 trained), though their tokens were counted; batches
    ended x 32 would have said 64 for the 36 (the pass's last batch has 4)."""
    results = run_keras_code(backend, SCRIPT, tmp_path, purpose="test_keras_failed_epoch_passes")
    # (epoch, partial, samples, counted, tokens): the samples of the batches whose end hooks ran.
    expected = {
        "pass_end": [[0, False, 64, True, 64], [1, False, 36, True, 36], [2, False, 64, True, 64],
                     [3, True, 36, True, 36]],
        "mid_pass": [[0, False, 64, True, 64], [1, False, 36, True, 36], [2, False, 64, True, 64],
                     [3, True, 32, True, 32]],
        "last_of_pass": [[0, False, 96, True, 96], [1, True, 4, True, 4]],
        "by_2": [[0, False, 100, True, 100], [1, True, 64, True, 64]],
        "by_3": [[0, False, 100, True, 100], [1, True, 100, True, 100]],
    }
    # Where epoch 1 began in the pass is not known (Keras 3.15 ran epoch 0 to 4 steps, 3.3 stops at
    # 3), so neither are the samples of its batch of 2 steps: not a guess.
    last = [1, True, 0, False, 64]
    if backend == "tensorflow":
        # A failure while an execution of several steps is begun and not ended may follow steps it
        # applied (an error inside the model; see _Progress.failed_in_part), and from the hooks a
        # callback raising as the execution begins looks the same: uncounted, samples and tokens.
        expected["by_2"][-1] = last = [1, True, 0, False, None]
    runs_on = results["version"] >= [3, 15]  # see _backend.epochs_run_on_in_passes
    for kind, records in expected.items():
        if backend == "torch" and kind.startswith("by_"):
            continue  # torch: steps_per_execution must be 1
        result = results[kind]
        assert result["summary"][0] == result["summary"][1], (kind, result)
        if runs_on:
            assert result["records"] == records, (kind, result)
        else:  # Keras 3.3 runs these epochs otherwise: a counted cut-short record is the one expected
            assert all(r == records[-1] for r in result["records"] if r[1] and r[3]), (kind, result)
    if backend != "torch" and runs_on:
        assert results["by_2_of_3"]["records"][-1] == last, results["by_2_of_3"]


DATASET_SCRIPT = PRELUDE + r"""
import tensorflow as tf


def batches(samples, length):  # batches of 32 with a static batch dimension
    rng = np.random.default_rng(0)
    x, y = rng.random((samples, 4), dtype=np.float32), rng.random((samples, 1), dtype=np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, y))
    if length == "unknown":
        data = data.filter(lambda x, y: True)  # TensorFlow does not know its length
    data = data.batch(32, drop_remainder=True)
    return data.repeat() if length == "endless" else data


out = {"version": [int(part) for part in keras.__version__.split(".")[:2]]}
for kind, samples, length, steps, per_execution, epochs, breaks in (
        ("known", 160, "known", 6, 2, 2, None),          # 5 batches: each epoch runs 2, 2 and 1 (Keras's plan: 6)
        ("runs_on", 160, "known", 3, 2, 2, None),        # epochs of 2+2 steps, then 1 (the pass's end)
        ("cut_at_end", 320, "known", 4, 4, 3, (2, 3, "end")),  # epochs of 4, 4, 2: the 3rd cut short after its 2
        ("unknown", 160, "unknown", 10, 2, 1, None),     # 2, 2, 1 and a 4th execution that finds no data
        ("endless", 160, "endless", 6, 2, 3, (2, 2, "begin"))):  # no pass ends: an execution runs its 2 steps
    directory = tempfile.mkdtemp(dir=sys.argv[1])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=[Ones()], steps_per_execution=per_execution)
    callbacks = [EnergyCallback(output_dir=directory, intensity=100.0, token_counter="tokens")]
    try:
        model.fit(batches(samples, length), steps_per_epoch=steps, epochs=epochs, verbose=0,
                  callbacks=callbacks + ([Breaks(*breaks, exact=True)] if breaks else []))
    except RuntimeError:
        pass
    watch.settle()
    out[kind] = [(r.epoch, r.partial, r.samples, r.samples_counted, r.tokens)
                 for r in read_records(directory) if r.phase == "train"]
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_an_epoch_over_a_data_set_of_known_length_stops_at_its_end_with_several_steps_per_execution(tmp_path, backend):
    """Regression: over a ``tf.data`` data set of 5 batches of 32 at ``steps_per_execution=2`` the
    last execution of a pass runs one step, not two. Every epoch of ``steps_per_epoch=6`` recorded
    192 samples for 160 trained (the batches ended x 32 overrode the loss tracker's 160), one of 3
    (the pass's last batch alone) 64 for 32, and an epoch cut short after the 2 steps that ended a
    pass of 10 by 4 steps per execution 128 for 64. An endless data set's executions run their
    steps: counted. The tokens are the samples trained. torch has no ``steps_per_execution``."""
    pytest.importorskip("tensorflow")
    results = run_keras_code(backend, DATASET_SCRIPT, tmp_path, purpose="test_keras_failed_epoch_passes")
    if results.pop("version") < [3, 15]:
        # Keras 3.3 runs a pass's short last execution otherwise (see _backend.may_run_past_the_data),
        # and on TensorFlow one that runs out of data ends no batch hook: an epoch of it alone is
        # recorded as 0 samples, as one that found no data is (a known limit; its tracker said 64).
        return
    for kind, records in results.items():  # the tokens count the samples trained: a counted record says the same
        assert all(r[2] == r[4] for r in records if r[3]), (kind, records)
    assert results["known"] == [[0, False, 160, True, 160], [1, False, 160, True, 160]], results
    assert results["runs_on"] == [[0, False, 128, True, 128], [1, False, 32, True, 32]], results
    assert results["cut_at_end"] == [[0, False, 128, True, 128], [1, False, 128, True, 128],
                                     [2, True, 64, True, 64]], results
    assert results["unknown"] == [[0, False, 160, True, 160]], results
    cut_in_execution = [2, True, 0, False, None] if backend == "tensorflow" else [2, True, 64, True, 64]  # see _Progress.failed_in_part
    assert results["endless"] == [[0, False, 192, True, 192], [1, False, 192, True, 192], cut_in_execution], results
