"""Randomized user sequences on one Keras backend, in a process of its own (``test_keras_user_sequences.py``):

    python tests/keras_user_sequences_runner.py <backend> <out_dir> <seeds, comma-separated>

Each seed draws a data source (NumPy, ``tf.data``, ``PyDataset`` with an uneven last batch, an
endless generator with ``steps_per_epoch``), compiled or eager steps, and a sequence of fits, each
maybe crashing (an error or Ctrl-C from a callback in a training batch, in validation, between
epochs, or from a model layer inside the step), resumed by ``BackupAndRestore`` (``save_freq``
"epoch" or steps, ``delete_checkpoint`` on or off), by ``ModelCheckpoint`` + ``initial_epoch``, or
fit again from epoch 0, with ``validation_freq``; and ``evaluate`` / ``predict`` between them.

A fake clock only batches advance (one second each at 50 W): every joule is known. After each
step: all records of the directory hold every second once (none lost, none twice), each run's
summary is its records' sum, History / CSVLogger show the run's total at each epoch end, every
finished phase's samples are the rows Keras fed (counted by the data source), and the records'
epochs are the epochs Keras ran.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

from keras_runner_common import BACKEND, ITEMS, KERAS_VERSION, OUT, run_jobs  # first: it picks the backend

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.tracker import SUMMARY_FILE  # noqa: E402
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

POWER_W = 50.0
KWH_PER_S = POWER_W / 3.6e6
TRAIN, VAL, BATCH = 100, 30, 32  # training: batches of 32, 32, 32 and 4
SIZES = [32, 32, 32, 4]
VAL_BATCH = 8  # validation, evaluate, predict: batches of 8, 8, 8 and 6
VAL_BATCHES = -(-VAL // VAL_BATCH)
data_rng = np.random.default_rng(0)
X, Y = data_rng.random((TRAIN, 8), dtype=np.float32), data_rng.random((TRAIN, 1), dtype=np.float32)
XV, YV = data_rng.random((VAL, 8), dtype=np.float32), data_rng.random((VAL, 1), dtype=np.float32)


class Boom(Exception):
    """What a bug or an OOM would raise."""


class Batches(keras.utils.PyDataset):
    def __init__(self) -> None:
        super().__init__()

    def __len__(self) -> int:
        return len(SIZES)

    def __getitem__(self, i):
        return X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]


def forever():
    while True:
        for i in range(len(SIZES)):
            yield X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]


class Trap(keras.layers.Layer):
    """Identity that raises at its ``at``-th training call (eager steps only: a compiled step calls it once, to trace)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at, self.calls, self.error = None, 0, Boom

    def call(self, x, training=None):
        if training:
            self.calls += 1
            if self.at is not None and self.calls == self.at:
                self.at = None
                raise self.error("inside the model's step")
        return x


def tiny_model(eager: bool, per_execution: int = 1) -> tuple[keras.Model, Trap]:
    trap = Trap()
    model = keras.Sequential([keras.Input((8,)), trap, keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", run_eagerly=eager, steps_per_execution=per_execution)
    return model, trap


class Clocked(keras.callbacks.Callback):
    """One fake second per training / validation batch as it begins; notes what Keras ran; raises once if told."""

    def __init__(self, clock: FakeClock, crash=None, error=Boom) -> None:
        super().__init__()
        self.clock, self.crash, self.error = clock, crash, error
        self.epoch = None
        self.seconds = 0
        self.train_batches: dict[int, int] = {}  # epoch -> training batches begun
        self.val_batches: dict[int, int] = {}
        self.ended: list[int] = []
        self.at_epoch_end: dict[int, int] = {}  # epoch -> seconds of this fit at its end
        self.raised = False
        self.iterations: dict[int, int] = {}  # epoch -> the optimizer's step at its end

    def _raise(self, what):
        self.crash, self.raised = None, True
        raise self.error(what)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.train_batches[epoch] = 0
        if self.crash == (epoch, "begin"):
            self._raise(f"before epoch {epoch}")

    def on_train_batch_begin(self, batch, logs=None):
        self.clock.advance(1.0)
        self.seconds += 1
        self.train_batches[self.epoch] += 1

    def on_train_batch_end(self, batch, logs=None):
        if self.crash == (self.epoch, batch):
            self._raise(f"in batch {batch} of epoch {self.epoch}")

    def on_test_batch_begin(self, batch, logs=None):
        self.clock.advance(1.0)
        self.seconds += 1
        self.val_batches[self.epoch] = self.val_batches.get(self.epoch, 0) + 1

    def on_test_batch_end(self, batch, logs=None):
        if self.crash == (self.epoch, "validation"):
            self._raise(f"in the validation of epoch {self.epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self.iterations[epoch] = int(np.asarray(self.model.optimizer.iterations))
        self.ended.append(epoch)
        self.at_epoch_end[epoch] = self.seconds


def runs_past_the_data(model: keras.Model, batches: int) -> bool:
    """Does a compiled TensorFlow loop of ``batches`` end with a call that runs out of data? Keras
    before 3.7 runs a short last execution (4 batches by 3 steps per execution) as a whole one
    (``multi_step_on_iterator`` in Keras 3.3.3's ``backend/tensorflow/trainer.py``), which raises from
    inside the graph when the data ends, may have counted steps without data (Keras 3.3.3's optimizer
    took 5 steps an epoch for these 4 batches), and warns that the input ran out, interrupting the
    epoch. That loop's samples are recorded as uncounted (``samples_counted: false``), not guessed:
    a training epoch given ``samples_per_epoch`` too, as its hooks cannot tell it from one whose data
    ended before Keras's plan (only the first call's hooks end: 3 to 5 steps ran)."""
    return (BACKEND == "tensorflow" and KERAS_VERSION < (3, 7) and not model.run_eagerly
            and batches % model.steps_per_execution != 0)


def csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def flow(seed: int) -> None:
    rng = random.Random(seed)
    out = OUT / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    energy_dir, backup_dir, ckpt_dir = out / "energy", out / "backup", out / "ckpt"
    clock = FakeClock()
    eager = rng.random() < 0.4
    source = rng.choice(["numpy", "pydataset", "generator", "tfdata"])
    per_execution = 1 if eager else rng.choice([1, 1, 2, 3])
    if BACKEND == "torch":
        per_execution = 1  # Keras's torch backend runs one step per execution only
    model, trap = tiny_model(eager, per_execution)
    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", clock, POWER_W)], intensity=300.0, output_dir=energy_dir)
    steps: list[str] = [f"{source}, eager={eager}, steps_per_execution={per_execution}"]

    def context() -> str:
        return f"{BACKEND} seed {seed}: " + "; ".join(steps)

    try:
        steps_of(rng, seed, out, energy_dir, backup_dir, ckpt_dir, clock, eager, source, model, trap, callback, steps)
    except BaseException as error:
        raise AssertionError(context()) from error
    print(f"seed {seed}: " + context(), file=sys.stderr)


def steps_of(rng, seed, out, energy_dir, backup_dir, ckpt_dir, clock, eager, source, model, trap, callback, steps):
    per_execution = model.steps_per_execution
    seconds_total = 0  # every fake second every call ran
    run_seconds: dict[str, int] = {}
    backup_args = dict(save_freq=rng.choice(["epoch", 1, 2, 3, 5]), delete_checkpoint=rng.random() < 0.6)
    checkpoints: list[tuple[Path, int]] = []
    pending_backup: int | None = None  # epochs of a BackupAndRestore fit that raised

    def context() -> str:
        return f"{BACKEND} seed {seed}: " + "; ".join(steps)

    given = TRAIN if source != "generator" and rng.random() < 0.3 else None
    if given:
        steps.append("samples_per_epoch given")

    def new_callback() -> EnergyCallback:
        return EnergyCallback(sensors=[ScriptedSensor("gpu", clock, POWER_W)], intensity=300.0, output_dir=energy_dir,
                              samples_per_epoch=given)

    callback = new_callback()

    def data_kwargs() -> tuple[dict, int | None]:
        if source == "numpy":
            return dict(x=X, y=Y, batch_size=BATCH), None
        if source == "pydataset":
            return dict(x=Batches()), None
        if source == "tfdata":
            import tensorflow as tf
            return dict(x=tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH)), None
        spe = rng.choice([3, 4, 5])
        return dict(x=forever(), steps_per_epoch=spe), spe

    for step in range(rng.randint(3, 5)):
        op = rng.choice(["fit", "fit", "resume", "backup", "backup", "evaluate", "predict", "fit_again"])
        if pending_backup is not None and rng.random() < 0.7:
            op = "backup"
        if op == "resume" and not checkpoints:
            op = "fit"
        if op in ("evaluate", "predict"):
            before = clock()
            tick = keras.callbacks.LambdaCallback(**{f"on_{'test' if op == 'evaluate' else op}_batch_begin":
                                                     lambda batch, logs: clock.advance(1.0)})
            steps.append(op)
            if op == "evaluate":
                model.evaluate(XV, YV, batch_size=VAL_BATCH, verbose=0, callbacks=[callback, tick])
            else:
                model.predict(XV, batch_size=VAL_BATCH, verbose=0, callbacks=[callback, tick])
            assert not meter_threads(), context()
            ran = round(clock() - before)
            assert ran == -(-VAL_BATCHES // per_execution), (ran, context())  # the hooks run once per execution
            seconds_total += ran
            run_id = callback.tracker.run_id
            run_seconds[run_id] = run_seconds.get(run_id, 0) + ran
            records = check_run(run_id, [energy_dir], context=context())
            last = [r for r in records if r.phase in ("test", "predict")][-1]
            counted = op == "predict" or not runs_past_the_data(model, VAL_BATCHES)  # predict counts its outputs
            assert (last.phase, last.samples, last.partial, last.samples_counted) == (
                "test" if op == "evaluate" else "predict", VAL if counted else 0, False, counted), (last, context())
        else:
            epochs = rng.randint(2, 4)
            initial = 0
            extra = []
            if op == "resume":
                path, initial = rng.choice(checkpoints)
                epochs = initial + rng.randint(1, 2)
                if rng.random() < 0.5:  # a new process: a new model and a new callback
                    model, trap = tiny_model(eager, per_execution)
                    callback = new_callback()
                    steps.append("new model and callback")
                model.load_weights(str(path))
            if op == "backup":
                if pending_backup is not None:
                    epochs = pending_backup
                extra.append(keras.callbacks.BackupAndRestore(str(backup_dir), **backup_args))
            if rng.random() < 0.3:
                callback = new_callback()
                steps.append("new callback")
            validation_freq = rng.choice([1, 1, 2, [1, 3]])
            crash_kind = rng.choice([None, None, "batch", "validation", "begin", "layer"])
            # A layer raising inside JAX's eager step leaves the model's variables unusable for the
            # next fit (Keras's own behaviour, with or without this callback): TensorFlow only.
            # A compiled step calls the layer only to trace it (torch's step always calls it).
            if crash_kind == "layer" and (not (eager or BACKEND == "torch") or BACKEND == "jax"):
                crash_kind = "batch"
            crash_epoch = rng.randrange(initial, epochs)
            crash_batch = rng.randrange(3)
            error = rng.choice([Boom, KeyboardInterrupt])
            crash = None
            if crash_kind == "batch":
                crash = (crash_epoch, crash_batch)
            elif crash_kind in ("validation", "begin"):
                crash = (crash_epoch, crash_kind)
            elif crash_kind == "layer":
                trap.at, trap.error = trap.calls + rng.randint(1, 8), error
            clocked = Clocked(clock, crash, error)
            csv_path = out / f"log{step}.csv"
            saver = keras.callbacks.ModelCheckpoint(str(ckpt_dir / f"s{step}-{{epoch}}.weights.h5"), save_weights_only=True)
            callbacks = [callback, keras.callbacks.CSVLogger(str(csv_path)), saver, *extra, clocked]
            data, spe = data_kwargs()
            steps.append(f"{op}(epochs={epochs}, initial_epoch={initial}, validation_freq={validation_freq}, "
                         f"crash={crash_kind}@{crash or trap.at} {error.__name__ if crash_kind else ''}"
                         + (f", {backup_args}" if op == "backup" else "") + (f", steps_per_epoch={spe}" if spe else "") + ")")
            history = None
            # Keras 3.3's torch and JAX fit builds a model's unbuilt optimizer from a batch it takes from
            # the fit's epoch iterator (Trainer._symbolic_build), which steps_per_epoch keeps for the
            # epochs: that batch is never trained, and the fit trains from the generator's second batch
            # (epoch 0 of 3 steps: 32 + 32 + 4 = 68 samples, not 96). Run on torch (JAX: read); 3.8 takes none.
            skipped = int(spe is not None and BACKEND in ("torch", "jax") and KERAS_VERSION < (3, 8)
                          and not model.optimizer.built)
            try:
                history = model.fit(**data, epochs=epochs, initial_epoch=initial, verbose=0, callbacks=callbacks,
                                    validation_data=(XV, YV), validation_batch_size=VAL_BATCH, validation_freq=validation_freq)
            except (Boom, KeyboardInterrupt):
                clocked.raised = True
            except UnboundLocalError:
                # Keras keeps the epoch a BackupAndRestore restored (model._initial_epoch, by this fit's
                # or an earlier one's) for every later fit of the model (3.3 and 3.15 alike): a fit whose
                # epochs do not pass it trains nothing, and Keras 3.3's torch fit then raises this as it
                # calls on_train_end (`training_logs` is set only in the epoch loop;
                # keras-team/keras#20091 sets it first, as 3.8 does): Keras's own, after our callbacks ran.
                if not (BACKEND == "torch" and KERAS_VERSION < (3, 8) and not clocked.train_batches
                        and (getattr(model, "_initial_epoch", None) or initial) >= epochs):
                    raise
                steps[-1] += " (Keras's UnboundLocalError)"
            trap.at = None
            assert not meter_threads(), context()
            assert not callback.session.running, context()
            steps[-1] += f" -> epochs {sorted(clocked.train_batches)}, {'raised' if clocked.raised else 'returned'}"
            if op == "backup":
                pending_backup = epochs if clocked.raised else None
            seconds_total += clocked.seconds
            if not clocked.train_batches:
                continue
            run_id = callback.tracker.run_id
            run_seconds[run_id] = run_seconds.get(run_id, 0) + clocked.seconds
            records = check_run(run_id, [energy_dir], context=context())
            # The run's records hold every second of every call in it, once.
            got = sum(r.energy_kwh for r in records) / KWH_PER_S
            assert got == pytest.approx(run_seconds[run_id], rel=1e-9), ("run seconds", got, run_seconds[run_id], context())
            attempt = max(r.attempt for r in records)
            mine = [r for r in records if r.attempt == attempt]
            trained = [(r.epoch, r.partial) for r in mine if r.phase == "train"]
            expect_epochs = sorted(clocked.train_batches)
            assert [e for e, _ in trained] == expect_epochs, ("epochs", trained, expect_epochs, context())
            validated = [r.epoch for r in mine if r.phase == "validation"]
            assert validated == sorted(clocked.val_batches), ("validated", validated, sorted(clocked.val_batches), context())
            final_step = int(np.asarray(model.optimizer.iterations))
            for r in mine:
                if r.phase == "train":
                    want_step = final_step if r.partial else clocked.iterations[r.epoch]
                    assert r.step == want_step, ("step", r.epoch, r.partial, r.step, want_step, context())
                if r.phase == "train" and not r.partial:
                    if spe is None and runs_past_the_data(model, len(SIZES)):
                        assert not r.samples_counted, ("train samples: ran past the data", r, context())
                        continue
                    if spe is None:
                        want = TRAIN
                    else:
                        # an endless generator restarted by each fit: the fit's batches so far, in cycle
                        # Keras runs whole executions: steps_per_epoch=4 at steps_per_execution=3 trains 6 steps
                        ran = -(-spe // per_execution) * per_execution
                        done = skipped + ran * sorted(clocked.train_batches).index(r.epoch)
                        want = sum(SIZES[i % 4] for i in range(done, done + ran))
                    assert r.samples_counted and r.samples == want, ("train samples", r, want, context())
                if r.phase == "validation" and not r.partial and runs_past_the_data(model, VAL_BATCHES):
                    assert not r.samples_counted, ("val samples: ran past the data", r, context())
                elif r.phase == "validation" and not r.partial:
                    assert r.samples_counted and r.samples == VAL, ("val samples", r, context())
                if r.phase == "other":
                    assert r.energy_kwh == pytest.approx(0, abs=1e-15), ("a gap billed time", r, context())
            # Logged totals: the run's total at each epoch end.
            rows = csv_rows(csv_path)
            base = run_seconds[run_id] - clocked.seconds
            for row in rows:
                e = int(row["epoch"])
                if row.get("energy_kwh_total") not in (None, "", "NA"):
                    want = (base + clocked.at_epoch_end[e]) * KWH_PER_S
                    assert float(row["energy_kwh_total"]) == pytest.approx(want, rel=1e-9), (
                        "CSV total", e, float(row["energy_kwh_total"]) / KWH_PER_S, want / KWH_PER_S, context())
            if history is not None and history.history.get("energy_kwh_total"):
                want = (base + clocked.at_epoch_end[clocked.ended[-1]]) * KWH_PER_S
                got = history.history["energy_kwh_total"][-1]
                assert got == pytest.approx(want, rel=1e-9), ("History total", got / KWH_PER_S, want / KWH_PER_S, context())
            for p in sorted(ckpt_dir.glob(f"s{step}-*.weights.h5")):
                checkpoints.append((p, int(p.name.split("-")[1].split(".")[0])))
        # Every second the directory's records hold, once.
        all_records = read_records(energy_dir) if (energy_dir / "energy-records.jsonl").exists() else []
        got = sum(r.energy_kwh for r in all_records) / KWH_PER_S
        assert got == pytest.approx(seconds_total, rel=1e-9, abs=1e-6), ("directory seconds", got, seconds_total, context())
        summary = json.loads((energy_dir / SUMMARY_FILE).read_text())
        assert summary["energy_kwh"] / KWH_PER_S == pytest.approx(
            sum(r.energy_kwh for r in all_records if r.run_id == summary["run_id"]) / KWH_PER_S, rel=1e-9), context()


if __name__ == "__main__":
    run_jobs({f"seed {s}": (lambda s=int(s): flow(s)) for s in ITEMS})
