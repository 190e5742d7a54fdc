"""A ``model.evaluate`` that a user's callback makes inside a training epoch without this callback in
its ``callbacks``: Keras resets the model's metrics for it, so the loss tracker and the token metric
count on from the evaluation's counts, and the epoch's record took those for its own (88 samples and
264 tokens for 40 and 120). The record is exact where Keras fixes the batch size, else uncounted.
Each backend in a process of its own (Keras fixes it at import).
"""

from __future__ import annotations

import pytest

from keras_runs import TOKENS_METRIC, run_keras_code

pytest.importorskip("keras")


SCRIPT = r"""
import json, os, sys, threading, warnings
import keras, numpy as np
from greencallbacks import watch
from greencallbacks.keras import EnergyCallback
from greencallbacks.records import read_records

warnings.simplefilter("ignore")
""" + TOKENS_METRIC + r"""


class Evaluates(keras.callbacks.Callback):  # the user's: evaluates the model where told, without EnergyCallback
    def __init__(self, where, data, given=(), then_predict=()):
        super().__init__()
        self.where, self.data, self.given, self.then_predict = where, data, list(given), list(then_predict)

    def evaluate(self):
        self.model.evaluate(*self.data, batch_size=8, verbose=0, callbacks=self.given)
        if self.then_predict:  # and then a predict given EnergyCallback, in the same hook
            self.model.predict(self.data[0], batch_size=8, verbose=0, callbacks=self.then_predict)

    def on_epoch_begin(self, epoch, logs=None):
        if self.where == "epoch_begin":
            self.evaluate()

    def on_train_batch_end(self, batch, logs=None):
        if (self.where, batch) in (("batch", 1), ("last_batch", 4)):
            self.evaluate()


class Behind(keras.callbacks.Callback):  # keeps Keras's asynchronous batch hooks behind until validation begins
    async_safe = True  # Keras 3.15 on torch and JAX: batch end hooks run on a pool of (at most 32) threads

    def __init__(self):
        super().__init__()
        self.validating = threading.Event()

    def on_epoch_begin(self, epoch, logs=None):
        self.validating.clear()

    def on_train_batch_end(self, batch, logs=None):
        if threading.current_thread() is not threading.main_thread():  # every thread of the pool waits
            self.validating.wait(timeout=120)

    def on_test_begin(self, logs=None):
        self.validating.set()


class OnlyBools(keras.Sequential):  # a model whose stop_evaluating takes Keras's own values only
    def __setattr__(self, name, value):
        if name == "stop_evaluating" and not isinstance(value, bool):
            raise TypeError("stop_evaluating must be a bool")
        super().__setattr__(name, value)


rng = np.random.default_rng(0)
x, y = rng.random((40, 4), dtype=np.float32), rng.random((40, 3), dtype=np.float32)  # batches of 8: 24 tokens each
held_out = rng.random((64, 4), dtype=np.float32), rng.random((64, 3), dtype=np.float32)  # 64 samples, 192 tokens


def batches():  # a generator: batches of a size Keras does not fix
    while True:
        for i in range(0, 40, 8):
            yield x[i:i + 8], y[i:i + 8]


out = {}
for case in ("batch", "epoch_begin", "last_batch", "generator", "given", "then_predict", "hooks_behind", "unwatchable"):
    directory = os.path.join(sys.argv[1], case)
    model = (OnlyBools if case == "unwatchable" else keras.Sequential)([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse", metrics=[Ones()])
    energy = EnergyCallback(output_dir=directory, intensity=100.0, token_counter="tokens")
    where = {"generator": "batch", "given": "batch", "then_predict": "batch"}.get(case, case)
    user = Evaluates(where, held_out, given=[energy] if case == "given" else (),
                     then_predict=[energy] if case == "then_predict" else ())
    data = dict(x=batches(), steps_per_epoch=5) if case in ("generator", "then_predict", "unwatchable") else dict(x=x, y=y, batch_size=8)
    validation = dict(validation_data=(x[:16], y[:16])) if case in ("last_batch", "hooks_behind", "unwatchable") else {}
    if case == "unwatchable":  # no evaluate of the user's: the fit's validation, seen
        user = keras.callbacks.Callback()
    if case == "hooks_behind":  # no evaluate of the user's: 40 batches of 1, the fit's validation of 16 (48 tokens)
        data, user = dict(x=x, y=y, batch_size=1), Behind()
    model.fit(**data, **validation, epochs=2, verbose=0, callbacks=[energy, user])
    watch.settle()
    out[case] = [[r.epoch, r.samples, r.samples_counted, r.tokens, r.tokens_counted]
                 for r in read_records(directory) if r.phase == "train"]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_an_evaluate_not_given_the_callback_inside_an_epoch_leaves_its_counts_exact_or_uncounted(tmp_path, backend):
    """Regression: the epoch's record said 88 samples and 264 tokens, exact (40 and 120 trained, the
    evaluation's 64 and 192 taken in); evaluating 8 samples, 40 and 96. Now arrays count 40 exactly
    (their batches are fixed), a generator's samples are uncounted, and the tokens are uncounted."""
    results = run_keras_code(backend, SCRIPT, tmp_path, purpose="test_keras_unseen_evaluate_counts")
    uncounted_tokens = [[epoch, 40, True, None, False] for epoch in (0, 1)]
    for case in ("batch", "epoch_begin", "last_batch"):  # the last: then the fit's validation, seen
        assert results[case] == uncounted_tokens, (case, results)
    assert results["generator"] == [[epoch, 0, False, None, False] for epoch in (0, 1)], results
    # Given EnergyCallback, the evaluate is seen: the epoch's counts stay exact.
    assert results["given"] == [[epoch, 40, True, 120, True] for epoch in (0, 1)], results
    # Evaluated unseen, then a predict given it in the same hook: was 88 samples and 264 tokens, exact.
    assert results["then_predict"] == [[epoch, 0, False, None, False] for epoch in (0, 1)], results
    # The fit's validation alone, its batch hooks behind as it begins (Keras 3.15 on torch and JAX): 192
    # tokens recorded, exact, for 120 (the training's 120 taken for what it added after its validation's 48).
    assert results["hooks_behind"] == [[epoch, 40, True, 120, True] for epoch in (0, 1)], results
    # A model that refuses the mark: its validation's stop_evaluating = False stayed and was taken for an
    # unseen evaluate (samples and tokens of a generator uncounted, with a warning): now not watched.
    assert results["unwatchable"] == [[epoch, 40, True, 120, True] for epoch in (0, 1)], results
