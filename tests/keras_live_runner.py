"""Runs the Keras step-value scenarios of ``test_live.py`` on one backend, in a process of its own
(Keras fixes its backend at first import):

    python tests/keras_live_runner.py <torch|tensorflow> <out_dir>

Writes TensorBoard event files under ``<out_dir>/<scenario>/`` and what only this process can
see (History, where batch hooks ran, Keras's dispatch mode) to ``<out_dir>/results.json``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

BACKEND, OUT = sys.argv[1], Path(sys.argv[2])
os.environ["KERAS_BACKEND"] = BACKEND
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

import keras  # noqa: E402
import numpy as np  # noqa: E402

from greencallbacks.keras import EnergyCallback  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

BATCH, STEPS = 8, 40
rng = np.random.default_rng(0)
X, Y = rng.random((BATCH * STEPS, 8), dtype=np.float32), rng.random((BATCH * STEPS, 1), dtype=np.float32)


class WhereBatchHooksRun(keras.callbacks.Callback):
    """Async-safe like ours, so it does not change Keras's dispatch; notes the thread of each batch hook."""

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.on_main_thread: list[bool] = []

    def on_train_batch_end(self, batch, logs=None):
        self.on_main_thread.append(threading.current_thread() is threading.main_thread())


def fit(out: Path, tensorboard: bool, **kwargs) -> dict:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    energy = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0, output_dir=out, **kwargs)
    probe = WhereBatchHooksRun()
    callbacks = [energy, probe]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "tb"), update_freq=5))
    history = model.fit(X, Y, batch_size=BATCH, epochs=2, callbacks=callbacks, verbose=0)
    dispatch = lambda cbs: getattr(keras.callbacks.CallbackList(cbs), "_async_train", None)  # noqa: E731
    return {
        "history": history.history,
        "batch_hooks_on_main_thread": probe.on_main_thread,
        "async_train": {"energy": dispatch([energy]), "none": dispatch([])},
    }


results = {}
for name, tensorboard, kwargs in (("tensorboard", True, {}), ("tensorboard_off", True, {"step_metrics": False}),
                                  ("no_tensorboard", False, {}), ("off", False, {"step_metrics": False})):
    if tensorboard and BACKEND != "tensorflow":
        continue  # keras.callbacks.TensorBoard writes through tf.summary
    try:
        results[name] = fit(OUT / name, tensorboard, **kwargs)
    except Exception:  # noqa: BLE001 - reported to the test
        import traceback

        results[name] = {"error": traceback.format_exc()}
(OUT / "results.json").write_text(json.dumps(results))
