"""A callback's ``model.evaluate`` inside a training epoch, made without this callback, resets the
loss tracker unseen: the epoch's count then holds the evaluation's 40 samples and the batches trained
after it, 76 for the 100 trained (NumPy arrays, batches of 32), marked exact, in the epoch's record
and in that of an epoch whose validation then fails. Where Keras's data adapter fixes the batch size
the batches ended tell the count instead. Each backend in a process of its own (Keras fixes it at import).
"""

from __future__ import annotations

import pytest

from keras_runs import run_keras_code

pytest.importorskip("keras")


SCRIPT = r"""
import json, os, sys
import keras, numpy as np
from greencallbacks import watch
from greencallbacks.keras import EnergyCallback
from greencallbacks.records import read_records

rng = np.random.default_rng(0)
x, y = rng.random((100, 4), dtype=np.float32), rng.random((100, 1), dtype=np.float32)  # batches 32, 32, 32, 4


class EvaluatesMidEpoch(keras.callbacks.Callback):  # evaluates after epoch 1's 2nd batch; may break its validation
    def __init__(self, break_validation):
        super().__init__()
        self.break_validation, self.epoch = break_validation, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (1, 1):
            self.model.evaluate(x[:40], y[:40], batch_size=16, verbose=0)  # not given the energy callback

    def on_test_batch_begin(self, batch, logs=None):
        if self.break_validation and (self.epoch, batch) == (1, 1):
            raise RuntimeError("broken validation")


out = {}
for kind in ("ends", "validation fails"):
    directory = os.path.join(sys.argv[1], kind.replace(" ", "_"))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    try:
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, validation_data=(x[:40], y[:40]),
                  callbacks=[EnergyCallback(output_dir=directory, intensity=100.0),
                             EvaluatesMidEpoch(kind == "validation fails")])
    except RuntimeError:
        pass
    watch.settle()
    records = [r for r in read_records(directory) if r.phase == "train"]
    summary = json.load(open(os.path.join(directory, "energy-summary.json")))["phases"]["train"]
    out[kind] = {"records": [(r.epoch, r.partial, r.samples if r.samples_counted else None) for r in records],
                 "summary": summary["samples"]}
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_an_evaluate_without_the_callback_mid_epoch_leaves_the_epochs_count_right(tmp_path, backend):
    """Regression: the epoch's record said 76 samples (exact) for 100 trained, and so did that of
    an epoch whose validation failed after the evaluate."""
    results = run_keras_code(backend, SCRIPT, tmp_path, purpose="test_keras_evaluate_mid_epoch_samples")
    # (epoch, partial, samples where counted)
    assert results["ends"] == {"records": [[0, False, 100], [1, False, 100]], "summary": 200}, results
    assert results["validation fails"] == {"records": [[0, False, 100], [1, True, 100]], "summary": 200}, results
