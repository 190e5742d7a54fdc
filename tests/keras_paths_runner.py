"""Everyday Keras paths of ``test_keras_paths_more.py`` on one backend, in a process of its own.

    python tests/keras_paths_runner.py <backend> <out_dir> <scenario,...>

Keras fixes its backend at first import, so the test starts this script once per backend. Each
scenario trains a tiny model for real with a scripted 50 W sensor, checks the ledger invariants
of ``flow_invariants.py`` after every call, and writes "ok" or its failure to
``<out_dir>/results.json``. The samples are checked against what Keras itself fed: a metric of
the model's own that adds each batch's rows (``Rows``), which Keras resets and logs as it does
its loss tracker.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

from keras_runner_common import BACKEND, BATCH, KERAS_VERSION, POWER_W, TRAIN, VAL, X, XV, Y, YV, run_scenarios  # first: it picks the backend

import keras  # noqa: E402

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402


class Rows(keras.metrics.Metric):
    """The rows Keras fed since its last reset of the metrics: what the records must say."""

    def __init__(self, name: str = "rows", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(keras.ops.cast(keras.ops.shape(y_true)[0], "float32"))

    def result(self):
        return self.total * 1.0  # a new tensor: torch would hand the variable itself to the logs


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=[Rows()])
    return model


def new_callback(out: Path, **kwargs) -> EnergyCallback:
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0, output_dir=out,
                          **kwargs)


def counted(callback: EnergyCallback, out: Path, context: str) -> list[tuple]:
    """The invariants of the callback's run; its phases but the gaps as (phase, epoch, samples or None)."""
    assert not meter_threads(), context
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W, context=context)
    return [(r.phase, r.epoch, r.samples if r.samples_counted else None) for r in records if r.phase != "other"]


class StopAt(keras.callbacks.Callback):
    """Sets ``model.stop_training`` after one batch of each epoch, as TerminateOnNaN does on a NaN loss."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.model.stop_training = True


class Fed(keras.callbacks.Callback):
    """Each epoch's rows as Keras logged them: training's and validation's."""

    def __init__(self) -> None:
        super().__init__()
        self.train: list[int] = []
        self.validation: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.train.append(int(logs["rows"]))
        if "val_rows" in logs:
            self.validation.append(int(logs["val_rows"]))


def once_through():
    """The training set's batches once, of a length Keras cannot know."""
    return ((X[i:i + BATCH], Y[i:i + BATCH]) for i in range(0, TRAIN, BATCH))


def said(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "could not count" in str(w.message)]


# ------------------------------------------------------------------------------ scenarios
def samples_per_epoch_ended_early(out: Path) -> None:
    """samples_per_epoch= is a whole epoch's: an epoch that model.stop_training ends after 2 of its
    4 batches trained 64 samples, not the 100 given, and is uncounted (once said why); one stopped
    at its last batch is whole. Where Keras knows no plan (a generator), stop_training tells, and so
    do fewer steps than the fit's first epoch ran to its data's end."""
    seen = {}
    for name, stop, data in (("stopped", 1, "arrays"), ("stopped_at_the_end", 3, "arrays"),
                             ("generator_stopped", 1, "generator"), ("generator", None, "generator")):
        model, callback = tiny_model(), new_callback(out / name, samples_per_epoch=TRAIN)
        extra = [StopAt(stop)] if stop is not None else []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if data == "arrays":
                model.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[callback, *extra])
            else:
                model.fit(once_through(), epochs=1, verbose=0, callbacks=[callback, *extra])
        seen[name] = (counted(callback, out / name, name), said(caught))
    for name in ("stopped", "generator_stopped"):
        phases, warned = seen[name]
        assert phases == [("train", 0, None)], (name, phases)
        assert len(warned) == 1 and "ended after 2 steps" in warned[0], (name, warned)
        assert "samples_per_epoch= is a whole epoch's" in warned[0], warned
    assert "of the 4 Keras planned" in seen["stopped"][1][0], seen["stopped"]
    assert seen["stopped_at_the_end"] == ([("train", 0, TRAIN)], []), seen["stopped_at_the_end"]
    assert seen["generator"] == ([("train", 0, TRAIN)], []), seen["generator"]
    # Where Keras plans no steps, its data used up by the first epoch gives each later one only the
    # batches Keras read ahead of it (2 of 4, 64 rows): they were recorded as the 100 given.
    model, callback = tiny_model(), new_callback(out / "generator_used_up", samples_per_epoch=TRAIN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(once_through(), epochs=3, verbose=0, callbacks=[callback])
    phases, warned = counted(callback, out / "generator_used_up", "generator used up"), said(caught)
    assert phases[0] == ("train", 0, TRAIN) and len(phases) == 3, phases
    assert all(samples in (None, 0) for _, _, samples in phases[1:]), phases  # 0: Keras ran no step
    if None in [samples for _, _, samples in phases]:
        assert len(warned) == 1 and "an earlier epoch of this fit ran to its data's end" in warned[0], warned


def stopped_inside_an_epoch(out: Path) -> None:
    """model.stop_training set after batch 1 (TerminateOnNaN's way): the epoch's record holds the 64
    samples Keras fed, its validation still ran, History's total is the records'."""
    model, callback, fed = tiny_model(), new_callback(out), Fed()
    history = model.fit(X, Y, batch_size=BATCH, epochs=3, validation_data=(XV, YV), verbose=0,
                        callbacks=[callback, StopAt(1), fed])
    assert fed.train == [2 * BATCH] and fed.validation == [VAL], (fed.train, fed.validation)
    phases = counted(callback, out, "stop_training")
    assert phases == [("validation", 0, VAL), ("train", 0, 2 * BATCH)], phases
    records = check_run(callback.tracker.run_id, [out], power_w=POWER_W)
    logged_total_matches(records, history.history["energy_kwh_total"][-1], rel=1e-9, context="stop_training")


def manual_resume_with_load_model(out: Path) -> None:
    """model.save(), then in a "new process" (a new callback) keras.saving.load_model() and
    fit(initial_epoch=2, epochs=4): the same run, its next attempt, epochs labelled 2 and 3."""
    model, callback = tiny_model(), new_callback(out)
    model.fit(X, Y, batch_size=BATCH, epochs=2, validation_data=(XV, YV), verbose=0, callbacks=[callback])
    model.save(str(out / "model.keras"))
    run_id = callback.tracker.run_id
    loaded = keras.saving.load_model(str(out / "model.keras"), custom_objects={"Rows": Rows})
    resumed = new_callback(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded.fit(X, Y, batch_size=BATCH, epochs=4, initial_epoch=2, validation_data=(XV, YV), verbose=0,
                   callbacks=[resumed])
    assert resumed.tracker.run_id == run_id, (resumed.tracker.run_id, run_id)
    assert not [w for w in caught if issubclass(w.category, EnergyWarning) and "run" in str(w.message)], caught
    records = check_run(run_id, [out], power_w=POWER_W, context="load_model")
    trained = [(r.epoch, r.attempt, r.samples) for r in records if r.phase == "train"]
    assert trained == [(0, 0, TRAIN), (1, 0, TRAIN), (2, 1, TRAIN), (3, 1, TRAIN)], trained
    assert not meter_threads()


def repeating_data_and_steps(out: Path) -> None:
    """A repeating tf.data set with steps_per_epoch and validation_steps, evaluate / predict with
    steps= between fits, a PyDataset read by two threads: every record holds the rows Keras fed
    (which epoch holds the partial batches differs between Keras releases)."""
    import tensorflow as tf

    model, callback, fed = tiny_model(), new_callback(out / "tf_data"), Fed()
    train = tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH).repeat()
    validation = tf.data.Dataset.from_tensor_slices((XV, YV)).batch(8).repeat()
    model.fit(train, steps_per_epoch=5, epochs=3, validation_data=validation, validation_steps=3, verbose=0,
              callbacks=[callback, fed])
    tested = model.evaluate(validation, steps=2, verbose=0, callbacks=[callback], return_dict=True)
    model.predict(validation.map(lambda x, y: x), steps=2, verbose=0, callbacks=[callback])
    phases = counted(callback, out / "tf_data", "tf.data")
    assert [p[2] for p in phases if p[0] == "train"] == fed.train, (phases, fed.train)
    assert [p[2] for p in phases if p[0] == "validation"] == fed.validation, (phases, fed.validation)
    assert phases[-2:] == [("test", None, int(tested["rows"])), ("predict", None, 16)], phases

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return math.ceil(TRAIN / BATCH)

        def __getitem__(self, i: int):
            return X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]

    if KERAS_VERSION == (3, 6) and BACKEND == "torch":
        return  # Keras 3.6.0's fit waits forever on such a PyDataset under torch, without this callback too
    model, callback, fed = tiny_model(), new_callback(out / "threads"), Fed()
    model.fit(Batches(workers=2, use_multiprocessing=False), epochs=2, verbose=0, callbacks=[callback, fed])
    phases = counted(callback, out / "threads", "PyDataset workers=2")
    assert [p[2] for p in phases if p[0] == "train"] == fed.train, (phases, fed.train)


class Boom(Exception):
    """What a bug or an OOM would raise."""


class RaiseAt(keras.callbacks.Callback):
    """Raises once, after training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.at = None
            raise Boom(f"in batch {batch} of epoch {self.epoch}")


def resume_past_a_checkpoint_inside_the_failed_epoch(out: Path) -> None:
    """ModelCheckpoint(save_freq=<steps>) saves inside epoch 1, named by Keras with epoch + 1
    (m-02-...); the fit fails in epoch 1; a new process loads that checkpoint and fits from
    initial_epoch=2. The same training: it continues the run (its 1.3 epochs of energy were left out
    of every later total, as a new run, with a warning blaming the output directory)."""
    checkpoints = out / "checkpoints"
    model, callback = tiny_model(), new_callback(out / "energy")
    saver = keras.callbacks.ModelCheckpoint(str(checkpoints / "m-{epoch:02d}-{batch}.keras"), save_freq=3)
    try:  # 13 batches of 8 an epoch: saved after batches 2, 5, 8 and 11 of each
        model.fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[callback, saver, RaiseAt(1, 9)])
    except Boom:
        pass
    run_id = callback.tracker.run_id
    newest = max(checkpoints.iterdir(), key=lambda path: path.stat().st_mtime)
    assert newest.name == "m-02-8.keras", sorted(path.name for path in checkpoints.iterdir())
    loaded = keras.saving.load_model(str(newest), custom_objects={"Rows": Rows})
    resumed = new_callback(out / "energy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = loaded.fit(X, Y, batch_size=8, epochs=3, initial_epoch=2, verbose=0, callbacks=[resumed])
    warned = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
    assert not warned, warned
    assert resumed.tracker.run_id == run_id, (resumed.tracker.run_id, run_id)
    records = check_run(run_id, [out / "energy"], power_w=POWER_W, context="checkpoint inside the failed epoch")
    trained = [(r.epoch, r.attempt, r.samples if r.samples_counted else None, r.partial)
               for r in records if r.phase == "train"]
    # The failed epoch trained batches 0 to 9 of 8 samples (uncounted until the batch size was used).
    assert trained == [(0, 0, TRAIN, False), (1, 0, 80, True), (2, 1, TRAIN, False)], trained
    logged_total_matches(records, history.history["energy_kwh_total"][-1], rel=1e-9, context="History")
    assert not meter_threads()


if __name__ == "__main__":
    run_scenarios(globals())
