"""Runs the Keras scenarios of ``test_keras.py`` on one backend, in a process of their own.

Keras fixes its backend at first import (``KERAS_BACKEND``), so ``test_keras.py`` starts this
script once per backend:

    python tests/keras_backend_runner.py <torch|tensorflow> <out_dir>

Each scenario trains a tiny model for real and writes under ``<out_dir>/<scenario>/``; what can
only be seen inside this process (History, warnings, live threads, exceptions) goes to
``<out_dir>/results.json``. The test file reads everything back and asserts. The script ends
with an uncaught exception on purpose (see the end of the file).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

BACKEND, OUT = sys.argv[1], Path(sys.argv[2])
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

import keras  # noqa: E402
import numpy as np  # noqa: E402

from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks import watch
from greencallbacks.records import read_records  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

assert keras.backend.backend() == BACKEND, keras.backend.backend()

POWER_W = 100.0  # the scripted sensor's constant power, so energy = 100 W x real elapsed time
PUE = 1.5
INTENSITY = 200.0
TRAIN, VAL, BATCH = 100, 30, 32  # 100 samples: 3 full batches and one of 4

rng = np.random.default_rng(0)
X = rng.random((TRAIN, 8), dtype=np.float32)
Y = rng.random((TRAIN, 1), dtype=np.float32)


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def scripted(**kwargs) -> EnergyCallback:
    sensor = ScriptedSensor("gpu", time.monotonic, POWER_W)
    return EnergyCallback(sensors=[sensor], intensity=INTENSITY, pue=PUE, **kwargs)


def meter_threads() -> list[str]:
    watch.settle()  # a fit that raised is written up by the watch thread within ~0.2 s
    return [t.name for t in threading.enumerate() if t.name == "greencallbacks-meter" and t.is_alive()]


def energy_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]


class Counter(keras.callbacks.Callback):
    """Counts the hooks it receives: each must come exactly once, even after EnergyCallback moved itself."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"on_train_begin": 0, "on_epoch_end": 0, "on_train_end": 0}
        self.energy_seen = []

    def on_train_begin(self, logs=None):
        self.calls["on_train_begin"] += 1

    def on_epoch_end(self, epoch, logs=None):
        self.calls["on_epoch_end"] += 1
        self.energy_seen.append("energy_kwh" in (logs or {}))

    def on_train_end(self, logs=None):
        self.calls["on_train_end"] += 1


class RaiseAt(keras.callbacks.Callback):
    """Fails the training in the middle of an epoch, like a bad batch or a full disk would."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at, self.epoch, self.threads_seen = (epoch, batch), None, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.threads_seen = meter_threads()
            raise RuntimeError("boom")


# ------------------------------------------------------------------------------------ scenarios
def scenario_loggers(out: Path) -> dict:
    """Loggers placed BEFORE EnergyCallback: it moves itself first and warns; loggers get the keys."""
    callbacks = [keras.callbacks.CSVLogger(str(out / "log.csv"))]
    if BACKEND == "tensorflow":  # keras.callbacks.TensorBoard writes through tf.summary
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "tb")))
    energy, counter = scripted(output_dir=out / "energy"), Counter()
    callbacks += [energy, counter]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = tiny_model().fit(
            X, Y, batch_size=BATCH, epochs=3, validation_data=(X[:VAL], Y[:VAL]), callbacks=callbacks, verbose=0
        )
    return {
        "history": history.history,
        "warnings": energy_warnings(caught),
        "calls_after_energy": counter.calls,
        "energy_seen_after": counter.energy_seen,
    }


def scenario_two_callbacks(out: Path) -> dict:
    """Two EnergyCallbacks in one fit write the same keys: the second says so, once."""
    callbacks = [scripted(output_dir=out / "a"), scripted(output_dir=out / "b")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model().fit(X, Y, batch_size=BATCH, epochs=2, callbacks=callbacks, verbose=0)
    return {"warnings": energy_warnings(caught)}


def scenario_inference(out: Path) -> dict:
    """EnergyCallback first (no order warning); then evaluate and predict on the same run."""
    energy = scripted(output_dir=out)
    model = tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, Y, batch_size=BATCH, epochs=1, callbacks=[energy, keras.callbacks.CSVLogger(str(out / "log.csv"))], verbose=0)
    model.evaluate(X[:50], Y[:50], batch_size=16, callbacks=[energy], verbose=0)
    predictions = model.predict(X[:70], batch_size=16, callbacks=[energy], verbose=0)
    # Asynchronous batch dispatch (CallbackList._async_train etc.) appeared after Keras 3.3: None there.
    dispatch = lambda cbs: [getattr(keras.callbacks.CallbackList(cbs), f"_async_{k}", None) for k in ("train", "test", "predict")]  # noqa: E731
    return {
        "warnings": energy_warnings(caught),
        "async_dispatch": {"with_energy": dispatch([energy]), "without": dispatch([])},
        "predicted": int(predictions.shape[0]),
        "test_metrics": energy.metrics("test"),
        "predict_metrics": energy.metrics("predict"),
        "threads_after": meter_threads(),
    }


def scenario_crash_then_resume(out: Path) -> dict:
    """Real sensors (their sampling thread runs): fit raises in epoch 1, then BackupAndRestore resumes."""
    energy_dir, backup = out / "energy", str(out / "backup")
    model = tiny_model()
    failing = RaiseAt(epoch=1, batch=1)
    try:
        model.fit(
            X, Y, batch_size=BATCH, epochs=3, verbose=0,
            callbacks=[EnergyCallback(output_dir=energy_dir), keras.callbacks.BackupAndRestore(backup), failing],
        )
        raised = False
    except RuntimeError:
        raised = True
        # Durable before anything else happens: the finished epoch is already on disk.
        on_disk_at_raise = [(r.phase, r.epoch, r.partial) for r in read_records(energy_dir)]
    gc.collect()  # the except block is over: fit's frames and CallbackList are released
    threads_after_crash = meter_threads()
    after_crash = [r.to_dict() for r in read_records(energy_dir)]

    resumed = EnergyCallback(output_dir=energy_dir)  # a new process would build a new callback too
    history = model.fit(
        X, Y, batch_size=BATCH, epochs=3, verbose=0,
        callbacks=[resumed, keras.callbacks.BackupAndRestore(backup)],
    )
    return {
        "raised": raised,
        "threads_during_fit": failing.threads_seen,
        "on_disk_at_raise": on_disk_at_raise,
        "threads_after_crash": threads_after_crash,
        "after_crash": after_crash,
        "resumed_epochs": len(history.history["loss"]),
        "resumed_history": history.history,
        "threads_after_resume": meter_threads(),
    }


def scenario_crash_then_reuse(out: Path) -> dict:
    """The caught exception is kept (so fit's frames stay alive, as in a notebook): the run is closed all the same."""
    energy = EnergyCallback(output_dir=out)
    model = tiny_model()
    try:
        model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[energy, RaiseAt(epoch=0, batch=2)])
    except RuntimeError as error:
        kept = error  # holds the traceback, hence fit's frames and its CallbackList
    gc.collect()
    threads_while_kept = meter_threads()
    model.evaluate(X[:40], Y[:40], batch_size=BATCH, callbacks=[energy], verbose=0)
    threads_after_reuse = meter_threads()  # the exception is still kept
    del kept
    return {"threads_while_kept": threads_while_kept, "threads_after_reuse": threads_after_reuse}


def scenario_runs(out: Path) -> dict:
    """One callback, three fits: from epoch 0 (new run), from epoch 1 (continues it), from 0 again (new run)."""
    energy, model = scripted(output_dir=out), tiny_model()
    fits = [dict(epochs=1), dict(epochs=2, initial_epoch=1), dict(epochs=1)]
    totals = []
    for kwargs in fits:
        history = model.fit(X, Y, batch_size=BATCH, callbacks=[energy], verbose=0, **kwargs)
        totals.append(history.history["energy_kwh_total"])
    return {"totals": totals}


def scenario_bad_configuration(out: Path) -> dict:
    messages = {}
    for name, kwargs in {"samples_per_epoch": {"samples_per_epoch": 0}, "pue": {"pue": 0.5}}.items():
        try:
            EnergyCallback(**kwargs)
            messages[name] = None
        except ValueError as error:
            messages[name] = str(error)
    return {"messages": messages}


def scenario_no_callback_list_seam(out: Path) -> dict:
    """A future Keras whose hooks are not called from a CallbackList method: the private seam is
    gone, and the callback still logs every epoch and tells validation from a standalone evaluate."""
    import greencallbacks.keras._callback as adapter

    seam = adapter._calling_list
    adapter._calling_list = lambda callback: None
    try:
        energy = scripted(output_dir=out)
        model = tiny_model()
        history = model.fit(X, Y, batch_size=BATCH, epochs=2, validation_data=(X[:VAL], Y[:VAL]),
                            callbacks=[energy], verbose=0)
        model.evaluate(X[:VAL], Y[:VAL], batch_size=BATCH, callbacks=[energy], verbose=0)
    finally:
        adapter._calling_list = seam
    return {
        "history": history.history,
        "records": [[r.phase, r.epoch, r.partial, r.samples] for r in read_records(out)],
        "threads_after": meter_threads(),
    }


SCENARIOS = [scenario_loggers, scenario_two_callbacks, scenario_inference, scenario_crash_then_resume, scenario_crash_then_reuse, scenario_runs,
             scenario_bad_configuration, scenario_no_callback_list_seam]

if __name__ == "__main__":
    results = {"backend": BACKEND}
    for scenario in SCENARIOS:
        name = scenario.__name__.removeprefix("scenario_")
        directory = OUT / name
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            results[name] = scenario(directory)
        except Exception:  # noqa: BLE001 - reported by the test that reads this scenario
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = time.perf_counter() - started
    (OUT / "results.json").write_text(json.dumps(results, default=str, allow_nan=True))

    # Last, a fit that raises and is never caught: the process dies with the traceback, and the
    # interpreter's exit still writes the unfinished epoch (the test expects exit status 1).
    uncaught = OUT / "uncaught"
    tiny_model().fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[EnergyCallback(output_dir=uncaught), RaiseAt(1, 1)])
