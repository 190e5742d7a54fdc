"""Sample counting scenarios of ``test_samples_frameworks.py`` on one Keras backend, in a process of its own.

    python tests/keras_samples_runner.py <torch|tensorflow|jax> <out_dir>

Keras fixes its backend at first import, so the test starts this script once per backend. Each
scenario fits (with validation), evaluates and predicts a tiny model for real; the records,
History and warnings go to ``<out_dir>/results.json`` for the test to assert on.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

BACKEND, OUT = sys.argv[1], Path(sys.argv[2])
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402

assert keras.backend.backend() == BACKEND, keras.backend.backend()

TRAIN, VAL, TEST, PREDICT, BATCH = 23, 11, 7, 9, 5  # every split ends with a partial batch
rng = np.random.default_rng(0)


def data(n: int) -> dict[str, np.ndarray]:
    return {
        "a": rng.random((n, 4), dtype=np.float32),
        "b": rng.random((n, 3), dtype=np.float32),
        "y1": rng.random((n, 1), dtype=np.float32),
        # Labels with a known number of non-zero entries: the "tokens" a metric counts.
        "y2": (rng.random((n, 2)) > 0.4).astype(np.float32),
    }


class NonZero(keras.metrics.Metric):
    """Counts the non-zero labels seen since the last reset (a token count computed in the graph)."""

    def __init__(self, name="tokens", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(keras.ops.sum(keras.ops.cast(keras.ops.not_equal(y_true, 0), "float32")))

    def result(self):
        # A new tensor: on the torch backend the variable itself would change under the epoch's
        # logs when validation reuses the metric.
        return self.total * 1.0


def single():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model, (lambda d: d["a"]), (lambda d: d["y1"])


def multi(kind: str):
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    out1 = keras.layers.Dense(1, name="y1")(joined)
    out2 = keras.layers.Dense(2, name="y2")(joined)
    if kind == "dict":
        model = keras.Model({"a": a, "b": b}, {"y1": out1, "y2": out2})
        model.compile(optimizer="sgd", loss={"y1": "mse", "y2": "mse"}, metrics={"y2": [NonZero()]})
        return model, (lambda d: {"a": d["a"], "b": d["b"]}), (lambda d: {"y1": d["y1"], "y2": d["y2"]})
    wrap = list if kind == "list" else tuple
    model = keras.Model(wrap([a, b]), wrap([out1, out2]))
    model.compile(optimizer="sgd", loss=["mse", "mse"])
    return model, (lambda d: wrap([d["a"], d["b"]])), (lambda d: wrap([d["y1"], d["y2"]]))


def run(name: str, build, empty_validation: bool = False, **callback_kwargs) -> dict:
    out_dir = OUT / name
    model, x, y = build()
    train, val, test, predict = data(TRAIN), data(0 if empty_validation else VAL), data(TEST), data(PREDICT)
    callback = EnergyCallback(output_dir=out_dir, intensity=100.0, **callback_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x(train), y(train), batch_size=BATCH, epochs=2, verbose=0, callbacks=[callback],
                            validation_data=(x(val), y(val)))
        model.evaluate(x(test), y(test), batch_size=BATCH, verbose=0, callbacks=[callback])
        model.predict(x(predict), batch_size=BATCH, verbose=0, callbacks=[callback])
    records = [r for r in read_records(out_dir) if r.phase != "other"]
    return {
        "records": [
            {"phase": r.phase, "samples": r.samples, "samples_counted": r.samples_counted, "tokens": r.tokens,
             "partial": r.partial,
             "energy_j_per_sample": r.energy_j_per_sample, "energy_kwh": r.energy_kwh}
            for r in records
        ],
        "history": {k: [None if isinstance(v, float) and math.isnan(v) else v for v in vs]
                    for k, vs in history.history.items()},
        "warnings": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)],
        "nonzero": {"train": int((train["y2"] != 0).sum()), "validation": int((val["y2"] != 0).sum()),
                    "test": int((test["y2"] != 0).sum())},
    }


results = {
    "single": run("single", single),
    "list": run("list", lambda: multi("list")),
    "tuple": run("tuple", lambda: multi("tuple")),
    "dict": run("dict", lambda: multi("dict"), token_counter="y2_tokens"),
    "empty_validation": run("empty_validation", single, empty_validation=True),
    "uncounted_predict": run("uncounted_predict", single, sample_counter=lambda outputs: None),
}
OUT.mkdir(parents=True, exist_ok=True)
(OUT / "results.json").write_text(json.dumps(results))
