"""The Keras budget scenarios of ``test_budget_frameworks.py``, in a process of their own (Keras
fixes its backend at first import):

    python tests/keras_budget_runner.py <backend> <out_dir>

Each scenario trains a tiny model for real with a scripted H100 on a fake clock (one second per
batch at 3600 W: 1 Wh per batch, 4 batches per epoch) and writes what only this process can see
(History, warnings, the model's stop flag) to ``<out_dir>/results.json``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

BACKEND, OUT = sys.argv[1], Path(sys.argv[2])
os.environ["KERAS_BACKEND"] = BACKEND
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

import keras  # noqa: E402
import numpy as np  # noqa: E402

from greencallbacks import Budget  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.sensors.base import Kind  # noqa: E402
from greencallbacks.session import EnergySession  # noqa: E402
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

EPOCHS = 10
rng = np.random.default_rng(0)
X = rng.random((100, 8), dtype=np.float32)  # 100 samples in batches of 32: 4 batches
Y = rng.random((100, 1), dtype=np.float32)


class H100(ScriptedSensor):
    def describe(self) -> dict:
        return {**super().describe(), "model": "NVIDIA H100 80GB HBM3"}


class Tick(keras.callbacks.Callback):
    def __init__(self, clock) -> None:
        super().__init__()
        self.clock = clock

    def on_train_batch_end(self, batch, logs=None):
        self.clock.advance(1.0)


def fit(directory: Path, limit: float, initial_epoch: int = 0, update_freq: int | None = None) -> dict:
    clock = FakeClock()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = EnergyCallback(
        output_dir=directory / "energy", sensors=[H100("gpu0", clock, power_w=3600.0, kind=Kind.GPU)],
        intensity=100.0, budget=Budget(kwh=limit, on_exceed="stop"),
    )
    checkpoint = keras.callbacks.ModelCheckpoint(str(directory / "ckpt" / "epoch{epoch}.keras"))
    # A TensorBoard logging batches gives the callback its step logs, where the budget is judged too.
    board = [keras.callbacks.TensorBoard(str(directory / "tb"), update_freq=update_freq)] if update_freq else []
    pauses_before = len(PAUSES_ASKED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            X, Y, batch_size=32, epochs=EPOCHS, initial_epoch=initial_epoch, verbose=0,
            callbacks=[callback, Tick(clock), checkpoint, *board],
        )
    saved = sorted((directory / "ckpt").glob("*.keras"), key=lambda p: int(p.stem[len("epoch"):]))
    keras.saving.load_model(saved[-1])  # the stopped epoch's checkpoint is whole
    return {
        "checkpoints": [p.name for p in saved],
        "epochs": history.epoch,
        "budget_stop": history.history.get("budget_stop", []),
        "embodied": history.history.get("embodied_co2eq_g_total", []),
        "stop_training": bool(model.stop_training),
        "pauses_asked": len(PAUSES_ASKED) - pauses_before,
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "budget" in str(w.message)],
    }


# Carbon-aware pauses are asked for before an epoch that follows another, never after the last.
PAUSES_ASKED = []
_pause = EnergySession.pause_between_epochs
EnergySession.pause_between_epochs = lambda self: PAUSES_ASKED.append(1) or _pause(self)

results = {}
# "step": logged every batch, the live total reaches the limit three batches into epoch 2, which
# ends there (the epoch's end would be one batch later).
for name, limit, stop_epoch, update_freq in (("total", 0.0095, 2, None), ("prediction", 0.03, 3, None),
                                             ("step", 0.0095, 2, 1)):
    directory = OUT / name
    first = fit(directory, limit, update_freq=update_freq)
    resumed = fit(directory, limit, initial_epoch=stop_epoch + 1, update_freq=update_freq)  # a new process would do the same
    results[name] = {"first": first, "resumed": resumed}
(OUT / "results.json").write_text(json.dumps(results))
