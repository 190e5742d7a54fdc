"""The Keras scenario of ``test_budget_step_stops.py``, in a process of their own (Keras fixes its
backend at first import):

    python tests/keras_step_stop_runner.py <backend> <out_dir>

A scripted GPU on a fake clock (1 Wh per batch, 4 batches of 100 samples an epoch) and a
TensorBoard logging every batch, so a 0.0055 kWh budget is reached at the log after batch 7;
BackupAndRestore and ModelCheckpoint save every 3 batches. Three fits in the same directories: the
stop, a resume with the same budget, a resume with a raised one. Writes ``<out_dir>/results.json``.
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
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

rng = np.random.default_rng(0)
X = rng.random((100, 8), dtype=np.float32)
Y = rng.random((100, 1), dtype=np.float32)


class Tick(keras.callbacks.Callback):
    """After EnergyCallback: a batch's log sees the batches before it. Also notes what ran."""

    def __init__(self, clock) -> None:
        super().__init__()
        self.clock, self.ran, self.epoch = clock, [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.clock.advance(1.0)
        self.ran.append([self.epoch, batch])


def fit(limit: float) -> dict:
    clock = FakeClock()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = EnergyCallback(output_dir=OUT / "energy", sensors=[ScriptedSensor("gpu0", clock, power_w=3600.0, kind=Kind.GPU)],
                              intensity=100.0, budget=Budget(kwh=limit, on_exceed="stop"))
    tick = Tick(clock)
    extra = [keras.callbacks.BackupAndRestore(str(OUT / "backup"), save_freq=3, delete_checkpoint=False),
             keras.callbacks.ModelCheckpoint(str(OUT / "ckpt" / "model.keras"), save_freq=3),
             keras.callbacks.TensorBoard(str(OUT / "tb"), update_freq=1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(X, Y, batch_size=32, epochs=4, verbose=0, callbacks=[callback, tick, *extra])
    return {
        "ran": tick.ran,
        "energy_kwh_total": history.history.get("energy_kwh_total", []),
        "budget_stop": history.history.get("budget_stop", []),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "budget" in str(w.message)],
    }


def batch_totals(fits: int) -> list[list[float]]:
    """Each fit's ``batch_energy_kwh_total`` as TensorBoard wrote it (one event file per fit)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    files = sorted((OUT / "tb" / "train").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == fits, files
    return [[float(make_ndarray(value.tensor)) for event in EventFileLoader(str(path)).Load()
             for value in event.summary.value if value.tag == "batch_energy_kwh_total"] for path in files]


results = {name: fit(limit) for name, limit in (("stop", 0.0055), ("same", 0.0055), ("raised", 0.05))}
for result, logged in zip(results.values(), batch_totals(len(results))):
    result["tensorboard_batches"] = logged
(OUT / "results.json").write_text(json.dumps(results))
