"""Everyday ``fit`` options of ``test_keras_everyday.py`` on one backend, in a process of its own.

    python tests/keras_everyday_runner.py <backend> <out_dir> <scenario,...>

Keras fixes its backend at first import, so the test starts this script once per backend. Each
scenario trains a tiny model for real with a scripted 50 W sensor, checks the ledger invariants
of ``flow_invariants.py`` and the exact sample counts after every call, and writes "ok" or its
failure to ``<out_dir>/results.json``.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from pathlib import Path

from keras_runner_common import BATCH, KERAS_VERSION, POWER_W, TRAIN, VAL, X, XV, Y, YV, rng, run_scenarios  # first: it picks the backend

import keras  # noqa: E402
import numpy as np  # noqa: E402

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402


def tiny_model(classes: int = 0) -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(classes or 1)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy" if classes else "mse")
    return model


def new_callback(out: Path) -> EnergyCallback:
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0, output_dir=out)


def counted(callback: EnergyCallback, out: Path, context: str) -> list[tuple]:
    """The invariants of the callback's run; its phases but the gaps as (phase, epoch, samples or None)."""
    assert not meter_threads(), context
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=context)
    return [(r.phase, r.epoch, r.samples if r.samples_counted else None) for r in records if r.phase != "other"]


def logged(callback: EnergyCallback, out: Path, history, csv_path: Path | None = None, context: str = "") -> None:
    """The last energy_kwh_total in History (and the CSVLogger's file) is what the records add up to."""
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=context)
    logged_total_matches(records, history.history["energy_kwh_total"][-1], rel=1e-9, context=context + " (History)")
    if csv_path is not None:
        last = list(csv.DictReader(csv_path.open()))[-1]["energy_kwh_total"]
        logged_total_matches(records, float(last), rel=1e-9, context=context + " (CSVLogger)")


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y=None, batch_size: int = BATCH, **kwargs) -> None:
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int):
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return (self.x[part],) if self.y is None else (self.x[part], self.y[part])


def forever():
    """The training set's batches over and over: 32, 32, 32, 4, 32, ..."""
    while True:
        for i in range(0, TRAIN, BATCH):
            yield X[i:i + BATCH], Y[i:i + BATCH]


# ------------------------------------------------------------------------------ scenarios
def validation_split_and_freq(out: Path) -> None:
    """validation_split=0.2 trains 80 samples an epoch; validation_freq runs validation in some epochs only."""
    model, callback, csv_path = tiny_model(), new_callback(out / "split"), out / "split.csv"
    history = model.fit(X, Y, batch_size=BATCH, epochs=4, validation_split=0.2, validation_freq=2, verbose=0,
                        callbacks=[callback, keras.callbacks.CSVLogger(str(csv_path))])
    phases = counted(callback, out / "split", "validation_split")
    assert phases == [("train", 0, 80), ("validation", 1, 20), ("train", 1, 80),
                      ("train", 2, 80), ("validation", 3, 20), ("train", 3, 80)], phases
    assert len(history.history["val_energy_kwh"]) == len(history.history["val_loss"]) == 2
    logged(callback, out / "split", history, csv_path, "validation_split")
    callback = new_callback(out / "freq")
    history = model.fit(X, Y, batch_size=BATCH, epochs=3, validation_data=(XV, YV), validation_freq=[1, 3], verbose=0,
                        callbacks=[callback])
    phases = counted(callback, out / "freq", "validation_freq=[1, 3]")
    assert [p for p in phases if p[0] == "validation"] == [("validation", 0, VAL), ("validation", 2, VAL)], phases
    logged(callback, out / "freq", history, context="validation_freq=[1, 3]")


def steps_per_epoch(out: Path) -> None:
    """A repeating generator with steps_per_epoch=5 ends epochs inside the data (and on its partial
    batch); validation_steps=2 of a PyDataset; class_weight and sample_weight leave counts as they are."""
    model, callback = tiny_model(), new_callback(out / "generator")
    # Keras before 3.5 fails a second epoch's validation_steps over a PyDataset itself (its cached
    # evaluation returns None, without this callback too): validation of the whole set there.
    steps = {"validation_steps": 2} if KERAS_VERSION >= (3, 5) else {}
    history = model.fit(forever(), steps_per_epoch=5, epochs=4, verbose=0, callbacks=[callback],
                        validation_data=Batches(XV, YV, batch_size=8), **steps)
    phases = counted(callback, out / "generator", "steps_per_epoch")
    # 5 batches an epoch of the data's 32, 32, 32, 4 over and over: one epoch holds two batches of 4,
    # which one is how far Keras's generator adapter reads ahead (the last from 3.5, the third in 3.3).
    assert sorted(p[2] for p in phases if p[0] == "train") == [104, 132, 132, 132], phases
    # Keras 3.5 and 3.6 go on with the validation set's iterator from one epoch to the next where
    # later ones start it again: batches 0-1, then 2-3 (8 and 6 samples), then none.
    fed = [16, 14, 0, 16] if (3, 5) <= KERAS_VERSION < (3, 7) else [16 if steps else VAL] * 4
    assert [p[2] for p in phases if p[0] == "validation"] == fed, phases
    logged(callback, out / "generator", history, context="steps_per_epoch")
    model, callback = tiny_model(classes=2), new_callback(out / "weighted")
    labels = (rng.random(TRAIN) > 0.7).astype("int32")
    model.fit(X, labels, batch_size=BATCH, epochs=1, class_weight={0: 1.0, 1: 5.0}, verbose=0, callbacks=[callback])
    assert counted(callback, out / "weighted", "class_weight") == [("train", 0, TRAIN)]
    history = model.fit(X, labels, sample_weight=rng.random(TRAIN).astype("float32"), batch_size=BATCH, epochs=1,
                        validation_data=(XV, labels[:VAL], np.zeros(VAL, "float32")), verbose=0, callbacks=[callback])
    assert counted(callback, out / "weighted", "sample_weight") == [("validation", 0, VAL), ("train", 0, TRAIN)]
    logged(callback, out / "weighted", history, context="sample_weight")


def early_stopping_then_more(out: Path) -> None:
    """EarlyStopping(restore_best_weights=True) on the energy total stops the fit; an evaluate and a
    predict of PyDatasets, then fit(initial_epoch=<epochs run>) with the same callback go on in its run."""
    model, callback, csv_path = tiny_model(), new_callback(out), out / "log.csv"
    stop = keras.callbacks.EarlyStopping(monitor="energy_kwh_total", mode="min", patience=1, restore_best_weights=True)
    history = model.fit(X, Y, batch_size=BATCH, epochs=10, validation_data=(XV, YV), verbose=0,
                        callbacks=[callback, stop, keras.callbacks.CSVLogger(str(csv_path), append=True)])
    assert history.epoch == [0, 1], history.epoch  # it sees the energy keys: the total only grows
    run_id = callback.tracker.run_id
    assert model.evaluate(Batches(XV, YV, batch_size=7), return_dict=True, verbose=0, callbacks=[callback])
    model.predict(Batches(XV, batch_size=7, workers=2), verbose=0, callbacks=[callback])
    history = model.fit(X, Y, batch_size=BATCH, epochs=4, initial_epoch=2, validation_data=(XV, YV), verbose=0,
                        callbacks=[callback, keras.callbacks.CSVLogger(str(csv_path), append=True)])
    assert callback.tracker.run_id == run_id
    phases = counted(callback, out, "early stopping")
    assert phases == [("validation", 0, VAL), ("train", 0, TRAIN), ("validation", 1, VAL), ("train", 1, TRAIN),
                      ("test", None, VAL), ("predict", None, VAL), ("validation", 2, VAL), ("train", 2, TRAIN),
                      ("validation", 3, VAL), ("train", 3, TRAIN)], phases
    logged(callback, out, history, csv_path, "early stopping")


def data_set_ends_with_the_epoch(out: Path) -> None:
    """A tf.data set of unknown length holding exactly steps_per_epoch batches: Keras keeps its
    iterator, so every other epoch finds it empty at its first call and trains nothing (and the next
    starts it again). Those epochs trained 0 samples: TensorFlow's fit hands them the logs of the
    reset metrics, which made them uncounted, with a warning blaming a custom train_step."""
    import tensorflow as tf

    def batches():
        for i in range(0, 96, BATCH):  # three full batches
            yield X[i:i + BATCH], Y[i:i + BATCH]

    signature = (tf.TensorSpec((None, 8), tf.float32), tf.TensorSpec((None, 1), tf.float32))
    seen = {}
    for per_execution in (1, 3):
        model, callback = tiny_model(), new_callback(out / str(per_execution))
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=per_execution)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(tf.data.Dataset.from_generator(batches, output_signature=signature), steps_per_epoch=3, epochs=3,
                      verbose=0, callbacks=[callback])
        said = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "could not count" in str(w.message)]
        seen[per_execution] = (counted(callback, out / str(per_execution), f"steps_per_execution={per_execution}"), said)
    expected = ([("train", 0, 96), ("train", 1, 0), ("train", 2, 96)], [])
    assert seen == {1: expected, 3: expected}, seen


if __name__ == "__main__":
    run_scenarios(globals())
