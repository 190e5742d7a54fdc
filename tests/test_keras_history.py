"""``History`` stays a table when an epoch runs no step, on real Keras (torch backend).

A generator that ``steps_per_epoch`` uses up leaves the next epoch without data: on torch and JAX
Keras logs nothing for it (no ``loss``), and History appends nothing for it. The callback added
its energy keys to those empty logs, so its lists grew one longer than ``loss`` and
``pandas.DataFrame(history.history)`` raised. The records still count that epoch (0 samples) and
the next epoch's totals include its energy.

This file is also the script run in Keras's own process (``python test_keras_history.py``): Keras
fixes its backend at first import, so the test itself never imports Keras.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if __name__ != "__main__":
    from keras_runs import run_keras

    pytestmark = pytest.mark.slow


def test_an_epoch_keras_logged_nothing_for_adds_no_energy_keys(tmp_path):
    results = run_keras("torch", tmp_path, str(Path(__file__).resolve()), str(tmp_path),
                        purpose="the Keras History scenario")
    assert results["steps"][1] == 0 and results["steps"][0] > 0, results  # the scenario drew an empty epoch
    lengths = results["lengths"]
    assert set(lengths.values()) == {results["epochs_logged"]}, lengths
    assert results["samples"] == [32 * steps for steps in results["steps"]], results
    assert results["failures"] == [], results["failures"]


def _script(out: Path) -> None:
    import json
    import time
    import traceback

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # for flow_invariants
    import keras
    import numpy as np

    from flow_invariants import check_run, logged_total_matches, meter_threads
    from greencallbacks.keras import EnergyCallback
    from tests.fakes.scripted import ScriptedSensor

    rng = np.random.default_rng(0)
    x, y = rng.random((96, 8), dtype=np.float32), rng.random((96, 1), dtype=np.float32)

    def three_batches():  # used up by the first epoch: the second finds no data
        for i in range(3):
            yield x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    class Steps(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.per_epoch: list[int] = []

            self.logged: list[int] = []  # the epochs Keras logged anything for

        def on_epoch_begin(self, epoch, logs=None):
            self.per_epoch.append(0)

        def on_epoch_end(self, epoch, logs=None):
            if logs:
                self.logged.append(epoch)

        def on_train_batch_end(self, batch, logs=None):
            self.per_epoch[-1] += 1

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0, output_dir=out)
    steps = Steps()
    history = model.fit(three_batches(), steps_per_epoch=3, epochs=3, verbose=0, callbacks=[callback, steps])
    failures = []
    try:
        assert not meter_threads()
        records = check_run(callback.tracker.run_id, [out], power_w=50.0)
        # What the records held at the end of the last epoch Keras logged: Keras 3.5 and 3.6 go on
        # with epochs that find no data (and log nothing) where later ones stop the fit.
        last = max(i for i, r in enumerate(records) if r.phase == "train" and r.epoch == steps.logged[-1])
        logged_total_matches(records[:last + 1], history.history["energy_kwh_total"][-1], rel=1e-9, context="History")
        try:
            import pandas
        except ImportError:
            pass
        else:
            pandas.DataFrame(history.history)  # raised: "All arrays must be of the same length"
    except Exception:  # noqa: BLE001 - reported
        failures.append(traceback.format_exc(limit=3))
    train = [r for r in records if r.phase == "train"]
    (out / "results.json").write_text(json.dumps({
        "steps": steps.per_epoch, "failures": failures,
        "lengths": {key: len(values) for key, values in history.history.items()},
        "epochs_logged": len(history.history.get("loss", [])),
        "samples": [r.samples if r.samples_counted else None for r in train],
    }))


if __name__ == "__main__":
    _script(Path(sys.argv[1]))
