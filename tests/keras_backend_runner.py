"""Runs the Keras scenarios of ``test_keras.py`` on one backend, in a process of their own.

Keras fixes its backend at first import (``KERAS_BACKEND``), so ``test_keras.py`` starts this
script once per backend:

    python tests/keras_backend_runner.py <torch|tensorflow|jax> <out_dir>

Each scenario trains a tiny model for real and writes under ``<out_dir>/<scenario>/``; what can
only be seen inside this process (History, warnings, live threads, exceptions) goes to
``<out_dir>/results.json``. The test file reads everything back and asserts. The script ends
with an uncaught exception on purpose (see the end of the file).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
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
from greencallbacks.tracker import SUMMARY_FILE  # noqa: E402
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


def guide_model(weighted: bool) -> keras.Model:
    """A model with its own train_step / test_step, as in Keras's guide "Customizing what happens in
    fit()" (torch and tensorflow versions): the loss tracker gets the batch's mean loss, once per
    step (``weighted``: with sample_weight=<batch size>, as Keras's own steps do)."""

    if BACKEND == "jax":
        return _jax_guide_model(weighted)

    class Custom(keras.Model):
        def train_step(self, data):
            x, y = data
            if BACKEND == "torch":
                import torch

                self.zero_grad()
                y_pred = self(x, training=True)
                loss = self.compute_loss(y=y, y_pred=y_pred)
                loss.backward()
                with torch.no_grad():
                    self.optimizer.apply([v.value.grad for v in self.trainable_weights], self.trainable_weights)
            else:
                import tensorflow as tf

                with tf.GradientTape() as tape:
                    y_pred = self(x, training=True)
                    loss = self.compute_loss(y=y, y_pred=y_pred)
                self.optimizer.apply(tape.gradient(loss, self.trainable_weights), self.trainable_weights)
            return self.update_metrics(loss, y, y_pred)

        def test_step(self, data):
            x, y = data
            y_pred = self(x, training=False)
            return self.update_metrics(self.compute_loss(y=y, y_pred=y_pred), y, y_pred)

        def update_metrics(self, loss, y, y_pred):
            for metric in self.metrics:
                if metric.name == "loss":
                    metric.update_state(loss, sample_weight=keras.ops.shape(y)[0] if weighted else None)
                else:
                    metric.update_state(y, y_pred)
            return {m.name: m.result() for m in self.metrics}

    inputs = keras.Input((8,))
    model = Custom(inputs, keras.layers.Dense(1)(keras.layers.Dense(4, activation="relu")(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    return model


def _jax_guide_model(weighted: bool) -> keras.Model:
    """The same as the guide's JAX version writes it: stateless steps over the metrics' variables."""
    import jax

    class Custom(keras.Model):
        def loss_and_updates(self, trainable, non_trainable, x, y, training):
            y_pred, non_trainable = self.stateless_call(trainable, non_trainable, x, training=training)
            return self.compute_loss(x, y, y_pred), (y_pred, non_trainable)

        def train_step(self, state, data):
            trainable, non_trainable, optimizer_vars, metrics_vars = state
            x, y = data
            grad_fn = jax.value_and_grad(self.loss_and_updates, has_aux=True)
            (loss, (y_pred, non_trainable)), grads = grad_fn(trainable, non_trainable, x, y, True)
            trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, grads, trainable)
            logs, metrics_vars = self.update_metrics(metrics_vars, loss, y, y_pred)
            return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

        def test_step(self, state, data):
            trainable, non_trainable, metrics_vars = state
            x, y = data
            loss, (y_pred, non_trainable) = self.loss_and_updates(trainable, non_trainable, x, y, False)
            logs, metrics_vars = self.update_metrics(metrics_vars, loss, y, y_pred)
            return logs, (trainable, non_trainable, metrics_vars)

        def update_metrics(self, metrics_vars, loss, y, y_pred):
            new_vars, logs = [], {}
            for metric in self.metrics:
                mine = metrics_vars[len(new_vars):len(new_vars) + len(metric.variables)]
                if metric.name == "loss":
                    weight = keras.ops.shape(y)[0] if weighted else None
                    mine = metric.stateless_update_state(mine, loss, sample_weight=weight)
                else:
                    mine = metric.stateless_update_state(mine, y, y_pred)
                logs[metric.name] = metric.stateless_result(mine)
                new_vars += mine
            return logs, new_vars

    inputs = keras.Input((8,))
    model = Custom(inputs, keras.layers.Dense(1)(keras.layers.Dense(4, activation="relu")(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    return model


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


def scenario_csv_across_fits(out: Path) -> dict:
    """A fit long enough for the prediction (from its 4th epoch), then one continuing it
    (initial_epoch) appending to the same CSV, as Keras's resume recipes do."""
    energy, model, path = scripted(output_dir=out / "energy"), tiny_model(), str(out / "log.csv")
    first = model.fit(X, Y, batch_size=BATCH, epochs=4, callbacks=[energy, keras.callbacks.CSVLogger(path, append=True)],
                      verbose=0)
    model.fit(X, Y, batch_size=BATCH, epochs=6, initial_epoch=4, verbose=0,
              callbacks=[energy, keras.callbacks.CSVLogger(path, append=True)])
    return {"history": first.history}


def scenario_resume_without_state(out: Path) -> dict:
    """fit(initial_epoch=2) where no run is recorded (a TensorBoard log_dir per process): a new run, said."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model().fit(X, Y, batch_size=BATCH, epochs=3, initial_epoch=2, verbose=0,
                         callbacks=[scripted(output_dir=out / "fresh")])
    return {"warnings": energy_warnings(caught), "records": [[r.phase, r.epoch, r.attempt] for r in read_records(out / "fresh")]}


def scenario_two_callbacks(out: Path) -> dict:
    """Two EnergyCallbacks in one fit write the same keys: the second says so, once. Then one
    EnergyCallback listed twice in fit, evaluate and predict: Keras would call each hook twice."""
    callbacks = [scripted(output_dir=out / "a"), scripted(output_dir=out / "b")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model().fit(X, Y, batch_size=BATCH, epochs=2, callbacks=callbacks, verbose=0)
    energy, model = scripted(output_dir=out / "twice"), tiny_model()
    with warnings.catch_warnings(record=True) as twice:
        warnings.simplefilter("always")
        history = model.fit(X, Y, batch_size=BATCH, epochs=2, validation_data=(X[:20], Y[:20]), callbacks=[energy, energy], verbose=0)
        model.evaluate(X[:50], Y[:50], batch_size=16, callbacks=[energy, energy], verbose=0)
        model.predict(X[:30], batch_size=16, callbacks=[energy, energy], verbose=0)
    return {"warnings": energy_warnings(caught), "twice_warnings": energy_warnings(twice),
            "twice_history_epochs": len(history.history["energy_kwh"]),
            "twice_records": [[r.phase, r.epoch, r.samples] for r in read_records(out / "twice")]}


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


def scenario_custom_steps(out: Path) -> dict:
    """Custom train_step / test_step: counting batches (the guide's way) is uncounted, never taken for
    samples; weighting by the batch size counts where the steps are known; Keras's own step counts
    batches of one."""
    val = (X[:VAL], Y[:VAL])
    fits = {  # name: (model, samples_per_epoch, batch size, training data)
        "guide": (guide_model(weighted=False), None, BATCH, (X, Y)),
        "guide_samples_per_epoch": (guide_model(weighted=False), TRAIN, BATCH, (X, Y)),
        "weighted": (guide_model(weighted=True), None, BATCH, (X, Y)),
        "builtin_batch_1": (tiny_model(), None, 1, (X[:20], Y[:20])),
    }
    results = {}
    for name, (model, samples_per_epoch, batch_size, (x, y)) in fits.items():
        energy = scripted(output_dir=out / name, samples_per_epoch=samples_per_epoch)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=batch_size, epochs=2, validation_data=val, callbacks=[energy], verbose=0)
            model.evaluate(X[:50], Y[:50], batch_size=batch_size, callbacks=[energy], verbose=0)
        results[name] = {"warnings": [w for w in energy_warnings(caught) if "could not count" in w]}
    return results


def scenario_backup_inside_epoch_0(out: Path) -> dict:
    """BackupAndRestore(save_freq=<steps>): a fit that raises inside epoch 0, after a backup, is
    resumed by a new callback (as in a new process) inside epoch 0; then a new fit from epoch 0."""
    energy_dir, backup = out / "energy", str(out / "backup")
    model = tiny_model()
    try:  # 4 batches an epoch: backed up after batch 1 (two steps), raises after batch 2
        model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
            EnergyCallback(output_dir=energy_dir), keras.callbacks.BackupAndRestore(backup, save_freq=2), RaiseAt(0, 2)])
    except RuntimeError:
        pass
    first = Probe()
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
        EnergyCallback(output_dir=energy_dir), keras.callbacks.BackupAndRestore(backup, save_freq=2), first])
    summary = json.loads((energy_dir / SUMMARY_FILE).read_text())
    # The resumed fit deleted the backup: a fit after it is a new one, BackupAndRestore or not.
    model.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[
        EnergyCallback(output_dir=energy_dir), keras.callbacks.BackupAndRestore(backup, save_freq=2)])
    result = {"restored_step": first.restored_step, "first_epoch": first.first_epoch, "summary_after_resume": summary,
              "threads_after": meter_threads()}
    if BACKEND == "torch":  # the same, killed (no exception to see) in a process of its own, after another run
        preempted = out / "preempted"
        done = subprocess.run([sys.executable, __file__, BACKEND, str(preempted), "preempt"], capture_output=True, text=True)
        result["preempted_exit"] = [done.returncode, done.stderr[-3000:]]
        resumed = Probe()
        model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
            EnergyCallback(output_dir=preempted / "energy"),
            keras.callbacks.BackupAndRestore(str(preempted / "backup"), save_freq=2), resumed])
        result["preempted_restored_step"] = resumed.restored_step
        fresh = out / "preempted_fresh"  # killed in the run's first epoch, before any phase ended
        done = subprocess.run([sys.executable, __file__, BACKEND, str(fresh), "preempt_fresh"], capture_output=True, text=True)
        result["preempted_fresh_exit"] = [done.returncode, done.stderr[-3000:]]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
                EnergyCallback(output_dir=fresh / "energy"), keras.callbacks.BackupAndRestore(str(fresh / "backup"), save_freq=2)])
        result["preempted_fresh_warnings"] = energy_warnings(caught)
    return result


def scenario_backup_after_another_fit(out: Path) -> dict:
    """A fit with BackupAndRestore fails in epoch 1; another fit trains into the same output
    directory; then the first resumes from its backup. It continued the other fit's run (named in
    energy-state.json last), not its own."""
    energy_dir, backup = out / "energy", str(out / "backup")
    first = EnergyCallback(output_dir=energy_dir)
    try:
        tiny_model().fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
            first, keras.callbacks.BackupAndRestore(backup), RaiseAt(1, 1)])
    except RuntimeError:
        pass
    crashed = first.tracker.run_id
    other = EnergyCallback(output_dir=energy_dir)
    tiny_model().fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[other])
    resumed = EnergyCallback(output_dir=energy_dir)  # as in a new process
    tiny_model().fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[resumed, keras.callbacks.BackupAndRestore(backup)])
    return {"crashed": crashed, "other": other.tracker.run_id, "resumed": resumed.tracker.run_id,
            "attempt": resumed.tracker.ledger.attempt}


def scenario_run_ids_in_one_directory(out: Path) -> dict:
    """Fits given run_ids train into one directory; a new callback given run_id="a" resumes with
    fit(initial_epoch=2) after "b" trained there: it continued "b" (named in energy-state.json last),
    silently. Then "a" resumed where only "b" has trained: a new run, said."""
    model = tiny_model()
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[scripted(output_dir=out / "both", run_id="a")])
    model.fit(X, Y, batch_size=BATCH, epochs=4, verbose=0, callbacks=[scripted(output_dir=out / "both", run_id="b")])
    resumed = scripted(output_dir=out / "both", run_id="a")  # as in a new process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, Y, batch_size=BATCH, epochs=3, initial_epoch=2, verbose=0, callbacks=[resumed])
    result = {"resumed": [resumed.tracker.run_id, resumed.tracker.ledger.attempt], "warnings": energy_warnings(caught)}
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[scripted(output_dir=out / "other", run_id="b")])
    alone = scripted(output_dir=out / "other", run_id="a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, Y, batch_size=BATCH, epochs=3, initial_epoch=2, verbose=0, callbacks=[alone])
    result["alone"] = [alone.tracker.run_id, alone.tracker.ledger.attempt]
    result["alone_warnings"] = energy_warnings(caught)
    # A second session given the same id records as "j-2"; a resume given "j" continues "j" (it
    # read the state "j-2" had written under the given id, and began "j-3").
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[scripted(output_dir=out / "renamed", run_id="j")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rename is said
        model.fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[scripted(output_dir=out / "renamed", run_id="j")])
    again = scripted(output_dir=out / "renamed", run_id="j")
    model.fit(X, Y, batch_size=BATCH, epochs=3, initial_epoch=2, verbose=0, callbacks=[again])
    result["after_a_rename"] = [again.tracker.run_id, again.tracker.ledger.attempt]
    return result


def scenario_two_callbacks_resume(out: Path) -> dict:
    """Two EnergyCallbacks in one fit (two grids) write into one directory; the fit fails in epoch 1
    and BackupAndRestore resumes it with two new callbacks (as in a new process). The first continued
    the second's run (both wrote one state file) and the second began a new run, said to be
    "measured by another process now". Without run_ids (their order tells them apart) and with."""
    result = {}
    for name, run_ids in (("by_order", (None, None)), ("by_run_id", ("grid-a", "grid-b"))):
        energy_dir, backup = out / name, str(out / name / "backup")

        def callbacks():
            return [scripted(output_dir=energy_dir, **({"run_id": r} if r else {})) for r in run_ids]

        crashed = callbacks()
        try:
            tiny_model().fit(X, Y, batch_size=BATCH, epochs=3, verbose=0,
                             callbacks=[*crashed, keras.callbacks.BackupAndRestore(backup), RaiseAt(1, 1)])
        except RuntimeError:
            pass
        resumed = callbacks()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tiny_model().fit(X, Y, batch_size=BATCH, epochs=3, verbose=0,
                             callbacks=[*resumed, keras.callbacks.BackupAndRestore(backup)])
        result[name] = {"crashed": [c.tracker.run_id for c in crashed],
                        "resumed": [[c.tracker.run_id, c.tracker.ledger.attempt] for c in resumed],
                        "warnings": [w for w in energy_warnings(caught) if "two EnergyCallbacks" not in w]}
    return result


class Probe(keras.callbacks.Callback):
    """The first epoch Keras runs and the optimizer's step then (BackupAndRestore restores both)."""

    first_epoch = restored_step = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch, self.restored_step = epoch, int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))


def preempt(out: Path, fresh: bool = False) -> None:
    """In a process of its own: a finished fit (another run, in energy-state.json; none when
    ``fresh``, so the fit begins in a directory that does not exist yet), then a fit killed inside
    epoch 0 after a backup, by os._exit, as a preemption would: no exception, no exit hook."""
    energy_dir = out / "energy"
    if not fresh:
        tiny_model().fit(X, Y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[EnergyCallback(output_dir=energy_dir)])
    energy = EnergyCallback(output_dir=energy_dir)

    def kill(batch, logs):
        if batch == 2:
            # A preemption comes later than the state file's write, queued when the fit began.
            state, deadline = energy_dir / "energy-state.json", time.monotonic() + 10
            while time.monotonic() < deadline and energy.tracker.run_id not in (state.read_text() if state.exists() else ""):
                time.sleep(0.01)
            os._exit(0)

    tiny_model().fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
        energy, keras.callbacks.BackupAndRestore(str(out / "backup"), save_freq=2),
        keras.callbacks.LambdaCallback(on_train_batch_end=kill)])
    sys.exit("not killed")


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


def scenario_inference_before_resume(out: Path) -> dict:
    """fit 3 epochs; then, as a sanity check, evaluate and predict a model loaded anew (as in a new
    process) before fit(initial_epoch=3): with the callback that then resumes (a new one), or a new
    callback in each call (inline). The resumed fit continues the run that trained, not the inference's."""
    results = {}
    for name in ("same_callback", "inline"):
        energy_dir = out / name
        trained = tiny_model()
        trained.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[scripted(output_dir=energy_dir)])
        model = tiny_model()  # loaded anew: this process never trained this object
        model.set_weights(trained.get_weights())
        later = scripted(output_dir=energy_dir)
        pick = (lambda: later) if name == "same_callback" else (lambda: scripted(output_dir=energy_dir))  # noqa: E731
        model.evaluate(X[:VAL], Y[:VAL], batch_size=BATCH, verbose=0, callbacks=[pick()])
        model.predict(X[:VAL], batch_size=BATCH, verbose=0, callbacks=[pick()])
        history = model.fit(X, Y, batch_size=BATCH, epochs=5, initial_epoch=3, verbose=0, callbacks=[pick()])
        results[name] = {"logged_total": history.history["energy_kwh_total"][-1],
                         "summary": json.loads((energy_dir / SUMMARY_FILE).read_text())}
    return results


def scenario_loop_run_again(out: Path) -> dict:
    """A script fitting in a loop, fit(epochs=e + 1, initial_epoch=e) with a new callback given
    run_id="loop" each time, run twice into one directory (a new model each time, as a new process
    builds). The second run's first fit is recorded as "loop-2" (the id has records); its later fits
    continued "loop" (the given id's state), silently: one training split across two runs."""
    result = {}
    for execution in ("first", "again"):
        model, totals = tiny_model(), []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for epoch in range(3):
                history = model.fit(X, Y, batch_size=BATCH, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                                    callbacks=[scripted(output_dir=out, run_id="loop")])
                totals.append(history.history["energy_kwh_total"][-1])
        result[execution] = {"totals": totals, "warnings": energy_warnings(caught)}
    return result


def scenario_inline_calls(out: Path) -> dict:
    """fit, evaluate, fit(initial_epoch=2), predict on one model, each with a new EnergyCallback
    written inline: evaluate and predict were each a run of their own. Then a callback whose run an
    inline one continued goes on with it (evaluate, fit(initial_epoch=3)): it numbered its records
    again from where it had stopped, and its resume took the run for one that reached epoch 1 only."""
    inline, model = out / "inline", tiny_model()
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[scripted(output_dir=inline)])
    model.evaluate(X[:VAL], Y[:VAL], batch_size=BATCH, verbose=0, callbacks=[scripted(output_dir=inline)])
    history = model.fit(X, Y, batch_size=BATCH, epochs=4, initial_epoch=2, verbose=0, callbacks=[scripted(output_dir=inline)])
    model.predict(X[:VAL], batch_size=BATCH, verbose=0, callbacks=[scripted(output_dir=inline)])
    other = scripted(output_dir=inline, run_id="other")  # another run_id given: not that run
    model.evaluate(X[:VAL], Y[:VAL], batch_size=BATCH, verbose=0, callbacks=[other])
    result = {"inline": {"logged_total": history.history["energy_kwh_total"][-1], "other": other.tracker.run_id}}
    kept, model = scripted(output_dir=out / "kept"), tiny_model()
    model.fit(X, Y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[kept])
    model.fit(X, Y, batch_size=BATCH, epochs=3, initial_epoch=2, verbose=0, callbacks=[scripted(output_dir=out / "kept")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.evaluate(X[:VAL], Y[:VAL], batch_size=BATCH, verbose=0, callbacks=[kept])
        history = model.fit(X, Y, batch_size=BATCH, epochs=4, initial_epoch=3, verbose=0, callbacks=[kept])
    result["kept"] = {"logged_total": history.history["energy_kwh_total"][-1], "warnings": energy_warnings(caught)}
    return result


def scenario_callback_list_without_params(out: Path) -> dict:
    """A CallbackList built without training parameters (as Keras's docs build one for a custom
    loop) given to fit: Keras uses it as it is and never calls set_params."""
    energy, model = scripted(output_dir=out), tiny_model()
    callbacks = keras.callbacks.CallbackList([energy], add_history=True, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(X, Y, batch_size=BATCH, epochs=3, verbose=0, callbacks=callbacks)
    return {"history": history.history, "warnings": energy_warnings(caught), "params": getattr(energy, "params", None)}


class EvaluateAt(keras.callbacks.Callback):
    """Evaluates in the middle of each training epoch, after the given batches, with ``callbacks``."""

    def __init__(self, batches, callbacks) -> None:
        super().__init__()
        self.batches, self.callbacks = batches, callbacks

    def on_train_batch_end(self, batch, logs=None):
        if batch in self.batches:
            self.model.evaluate(X[:VAL], Y[:VAL], batch_size=10, verbose=0, callbacks=self.callbacks)


def scenario_evaluate_inside_an_epoch(out: Path) -> dict:
    """A callback evaluates twice inside each training epoch (after batches 0 and 2), passing the
    EnergyCallback on, and fit validates at each epoch's end: every loop resets Keras's metrics."""
    energy = scripted(output_dir=out)
    tiny_model().fit(X, Y, batch_size=BATCH, epochs=2, validation_data=(X[:VAL], Y[:VAL]), verbose=0,
                     callbacks=[energy, EvaluateAt((0, 2), [energy])])
    return {}


def scenario_custom_loop(out: Path) -> dict:
    """A loop of the user's that drives a CallbackList around train_on_batch / test_on_batch (which
    reset the metrics every batch in Keras 3.15, never in 3.3): no loss-tracker count to take."""
    results = {}
    for name, samples_per_epoch in (("uncounted", None), ("samples_per_epoch", TRAIN)):
        energy, model = scripted(output_dir=out / name, samples_per_epoch=samples_per_epoch), tiny_model()
        callbacks = keras.callbacks.CallbackList([energy], add_history=True, model=model, epochs=2, steps=4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callbacks.on_train_begin()
            for epoch in range(2):
                callbacks.on_epoch_begin(epoch)
                for batch in range(4):
                    rows = slice(batch * BATCH, (batch + 1) * BATCH)
                    logs = model.train_on_batch(X[rows], Y[rows], return_dict=True)
                    callbacks.on_train_batch_end(batch, logs)
                callbacks.on_epoch_end(epoch, dict(logs))
            callbacks.on_train_end()
            callbacks.on_test_begin()
            for batch in range(3):
                rows = slice(batch * 10, (batch + 1) * 10)
                logs = model.test_on_batch(X[rows], Y[rows], return_dict=True)
                callbacks.on_test_batch_end(batch, logs)
            callbacks.on_test_end(dict(logs))
        results[name] = {"warnings": [w for w in energy_warnings(caught) if "could not count" in w]}
    return results


class FailIn(keras.callbacks.Callback):
    """Raises ``error`` after batch ``batch`` of a loop: ``validation`` (of epoch 1), ``evaluate`` or ``predict``."""

    def __init__(self, loop: str, batch: int, error=RuntimeError) -> None:
        super().__init__()
        self.loop, self.batch, self.error, self.epoch = loop, batch, error, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_test_batch_end(self, batch, logs=None):
        if batch == self.batch and (self.loop == "evaluate" or (self.loop == "validation" and self.epoch == 1)):
            raise self.error("boom")

    def on_predict_batch_end(self, batch, logs=None):
        if self.loop == "predict" and batch == self.batch:
            raise self.error("boom")


def scenario_partial_labels(out: Path) -> dict:
    """What a failed call's unfinished phases say: the optimizer's step where it failed, training
    counted where its batches' size is known, evaluation uncounted (Keras's count comes only at its
    end), predict's batches counted."""
    model = tiny_model()
    try:  # Ctrl-C in epoch 1's validation, after all 4 training batches: the optimizer is at step 8
        model.fit(X, Y, batch_size=BATCH, epochs=3, validation_data=(X[:VAL], Y[:VAL]), verbose=0,
                  callbacks=[scripted(output_dir=out / "validation"), FailIn("validation", 0, KeyboardInterrupt)])
    except KeyboardInterrupt:
        pass
    for loop in ("evaluate", "predict"):
        try:  # after batch 2 of 16 samples each: 48 samples
            call = model.evaluate if loop == "evaluate" else (lambda x, y, **kw: model.predict(x, **kw))
            call(X[:70], Y[:70], batch_size=16, verbose=0, callbacks=[scripted(output_dir=out / loop), FailIn(loop, 2)])
        except RuntimeError:
            pass
    return {"threads_after": meter_threads()}


def scenario_bad_configuration(out: Path) -> dict:
    messages = {}
    for name, kwargs in {"samples_per_epoch": {"samples_per_epoch": 0}, "pue": {"pue": 0.5}}.items():
        try:
            EnergyCallback(**kwargs)
            messages[name] = None
        except ValueError as error:
            messages[name] = str(error)
    return {"messages": messages}


def scenario_copies(out: Path) -> dict:
    """scikit-learn wrappers clone their estimators, callbacks and all (deepcopy): the callback's
    locks made a fresh one uncopyable. A copy of a used one measures a run of its own."""
    import copy
    import pickle

    energy = scripted(output_dir=out)
    copies = [copy.deepcopy(energy), pickle.loads(pickle.dumps(energy))]
    model = tiny_model()
    model.fit(X, Y, batch_size=BATCH, epochs=1, callbacks=[energy], verbose=0)
    energy._model = None  # (Keras's reference to the model it was used with)
    used = copy.deepcopy(energy)
    for callback in [*copies, used]:
        model.fit(X, Y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0)
    return {"runs": [c.tracker.run_id for c in [energy, *copies, used]]}


def scenario_no_callback_list_seam(out: Path) -> dict:
    """A future Keras whose hooks are not called from a CallbackList method: the private seam is
    gone, and the callback still logs every epoch and tells validation from a standalone evaluate."""
    import greencallbacks.keras._callback as adapter
    import greencallbacks.keras._nested as nested

    modules = (adapter, nested)  # each reads the seam (the hooks; the calls made inside a loop)
    seam = adapter._calling_list
    for module in modules:
        module._calling_list = lambda callback: None
    try:
        energy = scripted(output_dir=out)
        model = tiny_model()
        history = model.fit(X, Y, batch_size=BATCH, epochs=2, validation_data=(X[:VAL], Y[:VAL]),
                            callbacks=[energy], verbose=0)
        model.evaluate(X[:VAL], Y[:VAL], batch_size=BATCH, callbacks=[energy], verbose=0)
    finally:
        for module in modules:
            module._calling_list = seam
    return {
        "history": history.history,
        "records": [[r.phase, r.epoch, r.partial, r.samples] for r in read_records(out)],
        "threads_after": meter_threads(),
    }


SCENARIOS = [scenario_loggers, scenario_csv_across_fits, scenario_resume_without_state, scenario_two_callbacks, scenario_inference, scenario_crash_then_resume, scenario_crash_then_reuse, scenario_runs,
             scenario_bad_configuration, scenario_no_callback_list_seam, scenario_copies, scenario_custom_steps, scenario_backup_inside_epoch_0,
             scenario_inference_before_resume, scenario_callback_list_without_params, scenario_evaluate_inside_an_epoch,
             scenario_custom_loop, scenario_partial_labels, scenario_backup_after_another_fit,
             scenario_run_ids_in_one_directory, scenario_two_callbacks_resume, scenario_loop_run_again,
             scenario_inline_calls]

if __name__ == "__main__" and sys.argv[3:] in (["preempt"], ["preempt_fresh"]):
    preempt(OUT, fresh=sys.argv[3] == "preempt_fresh")
elif __name__ == "__main__":
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
