"""A Keras training epoch cut short (an exception raised in a batch, Ctrl-C, an exception in the
epoch's validation): its partial record carries the samples it trained where Keras's data adapter
fixes the batch size (NumPy arrays, here 100 samples in batches of 32) or its loss tracker counted
them before the validation began, without a device read (the crash is written up on the watch
thread, which never reads the model); a ``BackupAndRestore`` resume totals them with the epochs it
trains again. Where the batches' sizes are not known (a Python generator) the record stays
``samples_counted: false``. Each backend in a process of its own (Keras fixes it at import).
"""

from __future__ import annotations

import pytest

from keras_runs import run_keras_code

pytest.importorskip("keras")


SCRIPT = r"""
import json, os, sys, tempfile
import keras, numpy as np
from greencallbacks import watch
from greencallbacks.keras import EnergyCallback
from greencallbacks.records import read_records
from greencallbacks.report.data import phase_summary


class Breaks(keras.callbacks.Callback):  # raises as batch `batch` of epoch 1's training or validation begins
    def __init__(self, loop, batch, error):
        super().__init__()
        self.loop, self.batch, self.error, self.epoch = loop, batch, error, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.loop == "train" and (self.epoch, batch) == (1, self.batch):
            raise self.error

    def on_test_batch_begin(self, batch, logs=None):
        if self.loop == "validation" and (self.epoch, batch) == (1, self.batch):
            raise self.error


rng = np.random.default_rng(0)
x, y = rng.random((100, 4), dtype=np.float32), rng.random((100, 1), dtype=np.float32)  # batches 32, 32, 32, 4


def batches():  # a Python generator: Keras knows no batch size
    while True:
        for i in range(0, 100, 32):
            yield x[i:i + 32], y[i:i + 32]


out = {}
for kind, loop, batch, error, data in (
        ("error", "train", 2, RuntimeError("broken batch"), "arrays"),
        ("interrupt", "train", 2, KeyboardInterrupt(), "arrays"),
        ("validation", "validation", 1, RuntimeError("broken validation"), "arrays"),
        ("generator", "train", 2, RuntimeError("broken batch"), "generator")):
    directory, backup = os.path.join(sys.argv[1], kind), tempfile.mkdtemp(dir=sys.argv[1])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    fit = dict(epochs=3, verbose=0, validation_data=(x[:40], y[:40]))
    inputs = ((x, y), dict(batch_size=32)) if data == "arrays" else ((batches(),), dict(steps_per_epoch=4))
    try:
        model.fit(*inputs[0], callbacks=[EnergyCallback(output_dir=directory, intensity=100.0),
                                         keras.callbacks.BackupAndRestore(backup), Breaks(loop, batch, error)],
                  **inputs[1], **fit)
    except (RuntimeError, KeyboardInterrupt):
        pass
    watch.settle()
    crashed = [(r.epoch, r.partial, r.samples, r.samples_counted)
               for r in read_records(directory) if r.phase == "train"]
    if data == "generator":
        inputs = ((batches(),), dict(steps_per_epoch=4))
    model.fit(*inputs[0], callbacks=[EnergyCallback(output_dir=directory, intensity=100.0),
                                     keras.callbacks.BackupAndRestore(backup)], **inputs[1], **fit)
    records = [r for r in read_records(directory) if r.phase == "train"]
    summary = json.load(open(os.path.join(directory, "energy-summary.json")))["phases"]["train"]
    report = phase_summary(read_records(directory))["train"]
    out[kind] = {"crashed": crashed,
                 "resumed": [(r.attempt, r.epoch, r.partial, r.samples, r.samples_counted) for r in records],
                 "summary": summary["samples"], "records": sum(r.samples for r in records),
                 "report": [report["samples"]["mean"], report["samples_counted"]]}
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_an_epoch_cut_short_records_the_samples_it_trained(tmp_path, backend):
    """Regression: the loss tracker is read at a loop's end only, so an epoch cut short at its 3rd
    batch recorded ``samples: 0, samples_counted: false`` (64 trained), one cut short in its
    validation so too (100 trained), and after the resume the summary said 300 training samples for
    364 (400) trained and the report's training samples were not counted (per-sample values n/a)."""
    results = run_keras_code(backend, SCRIPT, tmp_path, purpose="test_keras_failed_epoch_samples")
    for kind, trained in (("error", 64), ("interrupt", 64), ("validation", 100)):
        result = results[kind]
        assert result["crashed"] == [[0, False, 100, True], [1, True, trained, True]], (kind, result)
        # (attempt, epoch, partial, samples, counted): BackupAndRestore trains epoch 1 again from its start.
        assert result["resumed"] == [[0, 0, False, 100, True], [0, 1, True, trained, True],
                                     [1, 1, False, 100, True], [1, 2, False, 100, True]], (kind, result)
        assert result["summary"] == result["records"] == 300 + trained, (kind, result)
        assert result["report"] == [300 + trained, True], (kind, result)  # counted: per-sample values not n/a
    # A generator's batches have no size Keras knows: not a guess, still uncounted.
    result = results["generator"]
    assert result["crashed"] == [[0, False, 100, True], [1, True, 0, False]], result
    assert result["report"][1] is False, result
