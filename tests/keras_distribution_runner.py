"""Keras's in-process data parallelism on two CPU devices, in a process of its own
(``test_keras_in_process_distribution.py``): TensorFlow's ``MirroredStrategy`` (the model built and
compiled in its scope) or JAX's ``keras.distribution.DataParallel`` (``set_distribution``); on
torch the same calls on one device, as a control.

    python tests/keras_distribution_runner.py <tensorflow|jax|torch> <out_dir> <scenarios, comma-separated>

The two devices must exist before the backend starts: two logical CPUs for TensorFlow, two host
devices for XLA (``XLA_FLAGS``), both set here before ``keras_runner_common`` imports Keras.

A fake clock only batches advance (one second each at 50 W), so every joule is known. After each
call: each phase's samples are the rows of the global batches Keras fed (never a replica's share,
never twice), its step the optimizer's, its epoch the one Keras ran; the run's records sum to its
summary and to the total logged at each epoch end (History, CSVLogger, TensorBoard); a crash from
a callback inside an epoch resumed by ``BackupAndRestore`` bills every second once; no warning
comes twice.
"""

from __future__ import annotations

import os
import sys

if sys.argv[1] == "jax":  # before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
elif sys.argv[1] == "tensorflow":  # before TensorFlow starts
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import contextlib  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

from keras_runner_common import BACKEND, KERAS_VERSION, run_scenarios  # noqa: E402  (picks the backend)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402  (tf.data, TensorBoard's event files)
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.util.tensor_util import make_ndarray  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

POWER_W = 50.0
KWH_PER_S = POWER_W / 3.6e6
BATCH, VAL_BATCH = 32, 8  # global batches; each replica gets half
# The last batches are uneven: TensorFlow splits a batch of 5 into 3 and 2. JAX shards a batch
# evenly or raises (Keras's own: IndivisibleError for a last batch of 5), so its last batches are 6.
TRAIN, VAL = (102, 30) if BACKEND == "jax" else (101, 31)
STEPS = -(-TRAIN // BATCH)
rng = np.random.default_rng(0)
X, Y = rng.random((TRAIN, 8), dtype=np.float32), rng.random((TRAIN, 3), dtype=np.float32)
XV, YV = rng.random((VAL, 8), dtype=np.float32), rng.random((VAL, 3), dtype=np.float32)

if BACKEND == "tensorflow":
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    REPLICAS = STRATEGY.num_replicas_in_sync
    scope = STRATEGY.scope
elif BACKEND == "jax":
    import jax

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    REPLICAS = len(jax.devices())
    scope = contextlib.nullcontext
else:  # torch: one device, the same calls as a control
    REPLICAS = 1
    scope = contextlib.nullcontext
assert REPLICAS == (1 if BACKEND == "torch" else 2), REPLICAS
# Keras 3.7 to 3.9 keep no sum of the loss tracker's count over tf.distribute replicas: uncounted, said why.
UNSUMMED = BACKEND == "tensorflow" and (3, 7) <= KERAS_VERSION < (3, 10)


class Boom(Exception):
    """What a bug or an OOM would raise."""


class Tokens(keras.metrics.Sum):
    """The labels' values seen: a token count, as a ``Sum`` of the label mask would be."""

    def __init__(self, name="tokens", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(keras.ops.ones_like(y_true))


def new_model() -> keras.Model:
    with scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
        model.compile(optimizer="sgd", loss="mse", metrics=[Tokens()])
    return model


class Clocked(keras.callbacks.Callback):
    """One fake second per batch as it begins; notes what Keras ran; raises once in batch ``crash`` = (epoch, batch)."""

    def __init__(self, clock: FakeClock, crash: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.clock, self.crash = clock, crash
        self.epoch = None
        self.seconds = 0
        self.train_batches: dict[int, int] = {}
        self.at_epoch_end: dict[int, int] = {}  # epoch -> seconds of this call at its end
        self.iterations: dict[int, int] = {}

    def tick(self, batch=None, logs=None) -> None:
        self.clock.advance(1.0)
        self.seconds += 1

    on_test_batch_begin = on_predict_batch_begin = tick

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.train_batches[epoch] = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.tick(batch)
        self.train_batches[self.epoch] += 1

    def on_train_batch_end(self, batch, logs=None):
        if self.crash == (self.epoch, batch):
            self.crash = None
            raise Boom(f"in batch {batch} of epoch {self.epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self.iterations[epoch] = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.at_epoch_end[epoch] = self.seconds


def tensorboard_totals(log_dir: Path) -> dict[int, float]:
    """epoch -> ``epoch_energy_kwh_total`` in a TensorBoard run directory's event files."""
    totals = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "epoch_energy_kwh_total":
                    totals[event.step] = float(make_ndarray(value.tensor))
    return totals


class Sequence:
    """One user's calls on one energy directory; ``seconds``: every fake second any call ran."""

    def __init__(self, out: Path) -> None:
        self.out, self.energy_dir = out, out / "energy"
        self.clock = FakeClock()
        self.seconds = 0
        self.run_seconds: dict[str, int] = {}
        self.warned: dict[int, list[str]] = {}  # id of a callback -> the warnings given in its calls

    def callback(self, **kwargs) -> EnergyCallback:
        return EnergyCallback(sensors=[ScriptedSensor("gpu", self.clock, POWER_W)], intensity=300.0,
                              output_dir=self.energy_dir, **kwargs)

    def call(self, callback: EnergyCallback, method, *args, crash=None, **kwargs):
        """``method(*args, callbacks=[callback, Clocked, ...], **kwargs)``: its result (None if it
        raised Boom) and the Clocked that watched it; checks the records' sums after it."""
        clocked = Clocked(self.clock, crash)
        kwargs["callbacks"] = [callback, *kwargs.get("callbacks", []), clocked]
        result = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = method(*args, verbose=0, **kwargs)
            except Boom:
                pass
        assert not meter_threads()
        said = self.warned.setdefault(id(callback), [])
        said += [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
        assert len(set(said)) == len(said), f"a warning repeated: {said}"
        self.seconds += clocked.seconds
        run_id = callback.tracker.run_id
        self.run_seconds[run_id] = self.run_seconds.get(run_id, 0) + clocked.seconds
        records = check_run(run_id, [self.energy_dir])
        got = sum(r.energy_kwh for r in records) / KWH_PER_S
        assert got == pytest.approx(self.run_seconds[run_id], rel=1e-9), ("run seconds", got, self.run_seconds[run_id])
        everything = sum(r.energy_kwh for r in read_records(self.energy_dir)) / KWH_PER_S
        assert everything == pytest.approx(self.seconds, rel=1e-9), ("directory seconds", everything, self.seconds)
        return result, clocked

    def check_fit(self, callback: EnergyCallback, model: keras.Model, clocked: Clocked, history,
                  samples: dict[int, int], csv_path: Path | None = None, tb_dir: Path | None = None) -> None:
        """The last attempt's records of a fit that ran ``samples`` (epoch -> rows fed) in full
        epochs; History / CSVLogger / TensorBoard log the run's total at each epoch end."""
        run_id = callback.tracker.run_id
        records = [r for r in read_records(self.energy_dir) if r.run_id == run_id]
        mine = [r for r in records if r.attempt == max(r.attempt for r in records)]
        trained = [r for r in mine if r.phase == "train"]
        assert [r.epoch for r in trained] == sorted(clocked.train_batches), (trained, clocked.train_batches)
        for r in trained:
            if r.epoch not in samples:  # the epoch that raised, in a batch's end hook after it trained
                reached = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
                assert r.partial and r.step == reached, (r, reached)
                # Counted where Keras fixes the batch size and one device's logs say the batches
                # (arrays, JAX's global batches), else uncounted: never another number.
                trained = clocked.train_batches[r.epoch] * BATCH
                assert not r.samples_counted or r.samples == trained, ("cut short", r, trained)
                continue
            assert not r.partial and r.step == clocked.iterations[r.epoch], (r, clocked.iterations)
            assert r.energy_kwh == pytest.approx(clocked.train_batches[r.epoch] * KWH_PER_S, rel=1e-9), r
            if UNSUMMED:
                assert not r.samples_counted and r.energy_j_per_sample is None, r
            else:
                assert r.samples_counted and r.samples == samples[r.epoch], ("samples", r, samples)
                assert r.energy_j_per_sample == pytest.approx(r.energy_kwh * 3.6e6 / samples[r.epoch], rel=1e-9), r
        for r in mine:
            if r.phase == "validation" and not r.partial:
                assert (r.samples_counted, r.samples) == ((False, 0) if UNSUMMED else (True, VAL)), r
        base = self.run_seconds[run_id] - clocked.seconds
        want = {e: (base + s) * KWH_PER_S for e, s in clocked.at_epoch_end.items()}
        if history is not None:
            logged = dict(zip(history.epoch, history.history["energy_kwh_total"]))
            assert logged == pytest.approx(want, rel=1e-9), ("History", logged, want)
            assert logged[max(logged)] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
        if csv_path is not None:
            import csv

            rows = list(csv.DictReader(csv_path.open()))
            logged = {int(row["epoch"]): float(row["energy_kwh_total"]) for row in rows}
            assert logged == pytest.approx(want, rel=1e-9), ("CSVLogger", logged, want)
        if tb_dir is not None:
            logged = tensorboard_totals(tb_dir / "train")
            assert logged == pytest.approx(want, rel=1e-6), ("TensorBoard", logged, want)  # float32 in the file


def sequence(out: Path) -> None:
    """fit 2 epochs (uneven last batches, validation, CSVLogger, TensorBoard); fit on with
    ``initial_epoch`` and ``steps_per_epoch``; evaluate; predict; a fit that raises inside an
    epoch, resumed by ``BackupAndRestore`` in a new model and callback (a new process)."""
    user = Sequence(out)
    model, callback = new_model(), user.callback()
    csv_path, tb_dir = out / "log.csv", out / "tb"
    loggers = [keras.callbacks.CSVLogger(str(csv_path)), keras.callbacks.TensorBoard(str(tb_dir), update_freq=1)]
    history, clocked = user.call(callback, model.fit, X, Y, batch_size=BATCH, epochs=2, validation_data=(XV, YV),
                                 validation_batch_size=VAL_BATCH, callbacks=loggers)
    assert clocked.train_batches == {0: STEPS, 1: STEPS}, clocked.train_batches
    user.check_fit(callback, model, clocked, history, {0: TRAIN, 1: TRAIN}, csv_path, tb_dir)

    # On from epoch 2, 3 global batches an epoch of a data set that repeats.
    repeated = tf.data.Dataset.from_tensor_slices((X, Y)).repeat().batch(BATCH)
    history, clocked = user.call(callback, model.fit, repeated, epochs=4, initial_epoch=2, steps_per_epoch=3,
                                 validation_data=(XV, YV), validation_batch_size=VAL_BATCH)
    user.check_fit(callback, model, clocked, history, {2: 3 * BATCH, 3: 3 * BATCH})

    for method, phase in ((model.evaluate, "test"), (model.predict, "predict")):
        args = (XV, YV) if phase == "test" else (XV,)
        user.call(callback, method, *args, batch_size=VAL_BATCH)
        last = [r for r in read_records(user.energy_dir) if r.phase == phase][-1]
        counted = phase == "predict" or not UNSUMMED  # predict counts its outputs
        assert (last.samples, last.samples_counted, last.partial) == (VAL if counted else 0, counted, False), last

    # A new run: raises in the 2nd batch of epoch 1; a backup every 2 batches.
    backup = keras.callbacks.BackupAndRestore(str(out / "backup"), save_freq=2)
    model, callback = new_model(), user.callback()
    history, clocked = user.call(callback, model.fit, X, Y, batch_size=BATCH, epochs=3, callbacks=[backup],
                                 crash=(1, 1))
    assert history is None and clocked.train_batches == {0: STEPS, 1: 2}, clocked.train_batches
    user.check_fit(callback, model, clocked, None, {0: TRAIN})
    run_id = callback.tracker.run_id
    model, callback = new_model(), user.callback()  # as a new process would
    history, clocked = user.call(callback, model.fit, X, Y, batch_size=BATCH, epochs=3, callbacks=[backup])
    assert callback.tracker.run_id == run_id  # the resume continues the run
    # Keras restores the backup taken inside epoch 1 and runs that epoch again whole.
    assert clocked.train_batches == {1: STEPS, 2: STEPS}, clocked.train_batches
    user.check_fit(callback, model, clocked, history, {1: TRAIN, 2: TRAIN})
    assert sorted({r.attempt for r in read_records(user.energy_dir) if r.run_id == run_id}) == [0, 1]


def tokens(out: Path) -> None:
    """``token_counter`` naming a ``Sum`` metric: 3 tokens a row, so 3 * TRAIN a training epoch and
    3 * VAL a validation. Keras before 3.10 logs no sum over tf.distribute replicas (153 or 1359 of
    303 on 3.3.3 and 3.8.0): left out with one warning, never a wrong energy_j_per_token. Keras
    3.15's torch fit logs a training epoch's Sum as its validation's: read as the validation began."""
    user = Sequence(out)
    model, callback = new_model(), user.callback(token_counter="tokens")
    history, clocked = user.call(callback, model.fit, X, Y, batch_size=BATCH, epochs=2, validation_data=(XV, YV),
                                 validation_batch_size=VAL_BATCH)
    user.call(callback, model.evaluate, XV, YV, batch_size=VAL_BATCH)
    records = [(r.phase, r.tokens) for r in read_records(user.energy_dir) if r.phase != "other"]
    said = [w for w in user.warned[id(callback)] if "token_counter" in w]
    if BACKEND == "tensorflow" and KERAS_VERSION < (3, 10):
        assert all(not tokens for _, tokens in records), (records, history.history["tokens"])
        assert all(np.isnan(v) for v in history.history["energy_j_per_token"]), history.history
        (warned,) = said
        assert f"does not sum over the {REPLICAS} tf.distribute replicas" in warned, warned
        return
    assert records == [("validation", 3 * VAL), ("train", 3 * TRAIN)] * 2 + [("test", 3 * VAL)], records
    assert not said, said
    per_token = [r.energy_kwh * 3.6e6 / r.tokens for r in read_records(user.energy_dir) if r.phase == "train"]
    assert history.history["energy_j_per_token"] == pytest.approx(per_token, rel=1e-9)


if __name__ == "__main__":
    run_scenarios(globals())
    (Path(sys.argv[2]) / "keras.json").write_text(json.dumps(keras.__version__))
