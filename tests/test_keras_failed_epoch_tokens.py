"""A Keras training epoch cut short (an exception in a batch, Ctrl-C) with ``token_counter=``: its
partial record carries the tokens of the batches it trained, read from the logs Keras hands its batch
hooks (numbers it made already: no device read of ours), and a ``BackupAndRestore`` resume totals
them with the epochs it trains again. Each backend in a process of its own (Keras fixes it at import).
"""

from __future__ import annotations

import pytest

from keras_runs import TOKENS_METRIC, run_keras_code

pytest.importorskip("keras")


SCRIPT = r"""
import json, os, sys, tempfile
import keras, numpy as np
from greencallbacks import watch
from greencallbacks.keras import EnergyCallback
from greencallbacks.records import read_records
from greencallbacks.report.data import phase_summary


""" + TOKENS_METRIC + r"""


class Breaks(keras.callbacks.Callback):  # raises as batch `batch` of epoch `epoch` begins
    def __init__(self, epoch, batch, error):
        super().__init__()
        self.at, self.error, self.epoch = (epoch, batch), error, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise self.error


rng = np.random.default_rng(0)
x, y = rng.random((40, 4), dtype=np.float32), rng.random((40, 3), dtype=np.float32)  # batches of 8: 24 tokens each
out = {}
for kind, error in (("error", RuntimeError("broken batch")), ("interrupt", KeyboardInterrupt())):
    directory, backup = os.path.join(sys.argv[1], kind), tempfile.mkdtemp(dir=sys.argv[1])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse", metrics=[Ones()])
    fit = dict(batch_size=8, epochs=3, verbose=0, validation_data=(x[:16], y[:16]))
    try:
        model.fit(x, y, callbacks=[EnergyCallback(output_dir=directory, intensity=100.0, token_counter="tokens"),
                                   keras.callbacks.BackupAndRestore(backup), Breaks(1, 3, error)], **fit)
    except (RuntimeError, KeyboardInterrupt):
        pass
    watch.settle()
    crashed = [(r.epoch, r.partial, r.tokens, r.tokens_counted) for r in read_records(directory) if r.phase == "train"]
    model.fit(x, y, callbacks=[EnergyCallback(output_dir=directory, intensity=100.0, token_counter="tokens"),
                               keras.callbacks.BackupAndRestore(backup)], **fit)
    records = read_records(directory)
    summary = json.load(open(os.path.join(directory, "energy-summary.json")))["phases"]["train"]
    out[kind] = {"crashed": crashed,
                 "resumed": [(r.attempt, r.epoch, r.partial, r.tokens) for r in records if r.phase == "train"],
                 "summary": [summary["tokens"], summary.get("tokens_counted", True)],
                 "report": phase_summary(records)["train"]["tokens"]}
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_an_epoch_cut_short_records_the_tokens_of_the_batches_it_trained(tmp_path, backend):
    """Regression: the token metric was read from epoch-end logs alone, so the epoch cut short at its
    4th batch recorded no tokens (``tokens: null``, 72 trained) and the report's training J/token was
    n/a after the resume; it records 72 now, and the run's training totals 3 epochs and those 72."""
    results = run_keras_code(backend, SCRIPT, tmp_path, purpose="test_keras_failed_epoch_tokens")
    for kind in ("error", "interrupt"):
        result = results[kind]
        assert result["crashed"] == [[0, False, 120, True], [1, True, 3 * 24, True]], (kind, result)
        # (attempt, epoch, partial, tokens): BackupAndRestore trains epoch 1 again from its start.
        trained = [[0, 0, False, 120], [0, 1, True, 72], [1, 1, False, 120], [1, 2, False, 120]]
        assert result["resumed"] == trained, (kind, result)
        assert result["summary"] == [3 * 120 + 72, True], (kind, result)
        assert result["report"]["mean"] == 3 * 120 + 72, (kind, result)  # the report's training tokens: n/a before
