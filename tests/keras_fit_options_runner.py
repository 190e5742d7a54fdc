"""Everyday ``fit`` options and user callbacks on one backend, in a process of its own
(``test_keras_fit_options.py``):

    python tests/keras_fit_options_runner.py <backend> <out_dir> <scenario,...>

A fake clock that only batches advance (every loop's: training, fit's validation, and the
``evaluate`` / ``predict`` a user callback makes inside the fit), one second each at 50 W, so every
record's energy is known exactly from the batches Keras ran, and so is every logged total. After
each ``fit`` the run's records must hold, per epoch and per call, exactly those seconds and samples
(the rows Keras fed, never sample weights); ``History``, the ``CSVLogger`` file and the TensorBoard
event files (per epoch, and per batch at ``update_freq=2``) the run's total at that point; the
summary and ``greencallbacks report`` every second of the run.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
from pathlib import Path

from keras_runner_common import BACKEND, BATCH, KERAS_VERSION, TRAIN, VAL, X, XV, Y, YV, run_scenarios  # first: it picks the backend

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from keras_logged_runner import csv_rows, tensorboard_values  # noqa: E402
from greencallbacks import watch  # noqa: E402
from greencallbacks.cli import main as cli_main  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.tracker import SUMMARY_FILE  # noqa: E402
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

KWH_PER_S = 50.0 / 3.6e6
FLOAT32 = 1e-6  # TensorBoard stores float32
NESTED_BATCH = 10  # the nested calls' batch size: 3 batches of VAL = 30 rows


class Boom(Exception):
    """What a failing batch of a nested call raises, and the user's callback catches."""


class Ledger:
    """One run's fake seconds, by the record they belong to (("train" | "validation", epoch), or
    ("test" | "predict", n) for the n-th call made inside the fits), the samples each record must
    hold (None: uncounted), and the run's total where each logger was given it."""

    def __init__(self, out: Path, update_freq: int = 2) -> None:
        self.out, self.energy_dir, self.update_freq = out, out / "energy", update_freq
        self.csv, self.tb = out / "log.csv", out / "tb"
        self.clock = FakeClock()
        self.seconds: dict[tuple, int] = {}
        self.samples: dict[tuple, int | None] = {}
        self.total = self.calls = 0
        self.epoch: int | None = None
        self.at_epoch_end: dict[int, int] = {}  # epoch -> the run's seconds when its logs were filled
        self.at_step: dict[int, int] = {}  # this fit's TensorBoard step -> the run's seconds then
        self.steps = 0

    def callback(self) -> EnergyCallback:
        return EnergyCallback(sensors=[ScriptedSensor("gpu", self.clock, 50.0)], intensity=300.0,
                              output_dir=self.energy_dir)

    def tick(self, key: tuple) -> None:
        self.clock.advance(1.0)
        self.total += 1
        self.seconds[key] = self.seconds.get(key, 0) + 1

    def clocked(self) -> keras.callbacks.Callback:
        """The fit's clock, right after the EnergyCallback (which goes first) in its list."""
        ledger = self

        class Clocked(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                ledger.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                ledger.tick(("train", ledger.epoch))
                ledger.steps += 1

            def on_train_batch_end(self, batch, logs=None):
                ledger.at_step[ledger.steps] = ledger.total

            def on_test_batch_begin(self, batch, logs=None):
                ledger.tick(("validation", ledger.epoch))

            def on_epoch_end(self, epoch, logs=None):
                ledger.at_epoch_end[epoch] = ledger.total

        return Clocked()

    def nested(self, model, energy: EnergyCallback, how: str, fail_at: int | None = None) -> None:
        """``evaluate`` / ``predict`` of VAL rows made by a user callback inside the fit, passing the
        EnergyCallback on; ``fail_at``: its batch that raises, the exception caught by the callback."""
        self.calls += 1
        key, ledger = ("test" if how == "evaluate" else "predict", self.calls), self

        class Tick(keras.callbacks.Callback):
            def on_test_batch_begin(self, batch, logs=None):
                ledger.tick(key)

            def on_predict_batch_begin(self, batch, logs=None):
                ledger.tick(key)

            def on_test_batch_end(self, batch, logs=None):
                if batch == fail_at:
                    raise Boom(f"{how} batch {batch}")

            on_predict_batch_end = on_test_batch_end

        data = (XV, YV) if how == "evaluate" else (XV,)
        try:
            getattr(model, how)(*data, batch_size=NESTED_BATCH, verbose=0, callbacks=[energy, Tick()])
        except Boom:
            pass
        if fail_at is None:
            self.samples[key] = VAL
        else:  # predict: the batches it finished (the EnergyCallback's hook ran before the raise)
            self.samples[key] = None if how == "evaluate" else (fail_at + 1) * NESTED_BATCH

    def fit(self, model, energy: EnergyCallback, *, extra=(), context: str, y=Y, **kwargs):
        """``model.fit`` (X, ``y``) with the loggers, then every check; its History."""
        self.steps, self.at_step = 0, {}
        tensorboard = keras.callbacks.TensorBoard(str(self.tb), update_freq=self.update_freq)
        loggers = [keras.callbacks.CSVLogger(str(self.csv), append=True), tensorboard]
        event_files = set((self.tb / "train").glob("events.out.tfevents.*"))
        rows_before = len(csv_rows(self.csv))
        history = model.fit(X, y, batch_size=BATCH, verbose=0, callbacks=[energy, self.clocked(), *loggers, *extra],
                            **kwargs)
        assert not meter_threads() and not energy.session.running, context
        self.check(energy.tracker.run_id, context)
        wanted = {e: kwh(s) for e, s in self.at_epoch_end.items() if e in history.epoch}
        logged = {"History": dict(zip(history.epoch, history.history["energy_kwh_total"], strict=True)),
                  "CSVLogger": {int(r["epoch"]): float(r["energy_kwh_total"]) for r in csv_rows(self.csv)[rows_before:]}}
        (events,) = set((self.tb / "train").glob("events.out.tfevents.*")) - event_files
        written = tensorboard_values(events)
        logged["TensorBoard"] = dict(written["epoch_energy_kwh_total"])
        for logger, totals in logged.items():
            rel = FLOAT32 if logger == "TensorBoard" else 1e-9
            assert totals == pytest.approx(wanted, rel=rel), (logger, seconds(totals), seconds(wanted), context)
        live = written.get("batch_energy_kwh_total", [])
        at_steps = {s: kwh(t) for s, t in self.at_step.items() if s % self.update_freq == 0}
        if {step for step, _ in written.get("batch_loss", [])} == {0}:  # Keras 3.3 writes every batch at step 0
            live = list(zip(sorted(at_steps), (value for _, value in live)))
        assert dict(live) == pytest.approx(at_steps, rel=FLOAT32), ("batch", seconds(dict(live)), seconds(at_steps), context)
        return history

    def check(self, run_id: str, context: str) -> None:
        """The run's records: each holds its batches' seconds and samples; the summary and the report all of them."""
        records = check_run(run_id, [self.energy_dir], context=context)
        # The calls inside the fit by their kind (a failed one's record is written after the next call's).
        got, wanted = [], [(key[0], key[1] if key[0] in ("train", "validation") else None, float(s), self.samples[key])
                           for key, s in self.seconds.items()]
        for r in records:
            if r.phase == "other":
                assert r.energy_kwh == 0, (repr(r), context)  # no batch ran in a gap
                continue
            got.append((r.phase, r.epoch, round(r.energy_kwh / KWH_PER_S, 6), r.samples if r.samples_counted else None))
            if r.phase == "train":  # the fit's optimizer step: every training batch of the run so far
                steps = sum(s for (phase, epoch), s in self.seconds.items() if phase == "train" and epoch <= r.epoch)
                assert r.step == steps, (repr(r), steps, context)
        assert sorted(got, key=repr) == sorted(wanted, key=repr), (sorted(set(got) ^ set(wanted), key=repr), context)
        summary = json.loads((self.energy_dir / SUMMARY_FILE).read_text())
        assert summary["run_id"] == run_id and summary["energy_kwh"] == pytest.approx(kwh(self.total), rel=1e-9), context
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli_main(["report", str(self.energy_dir), "--run-id", run_id, "--format", "json"]) == 0
        (config,) = json.loads(out.getvalue())["configurations"]
        assert config["run_totals"][run_id]["energy_kwh"] == pytest.approx(kwh(self.total), rel=1e-9), context


def kwh(s: int) -> float:
    return s * KWH_PER_S


def seconds(totals: dict) -> dict:
    return {k: round(v / KWH_PER_S, 4) for k, v in sorted(totals.items())}


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


# ------------------------------------------------------------------------------ scenarios
def nested_calls(out: Path) -> None:
    """A user callback evaluates and predicts inside the fit, passing the EnergyCallback on: after a
    training batch and in on_epoch_end; some of those calls raise at a batch and the callback
    catches the exception (the fit goes on), after a middle batch, the epoch's last (validation
    follows) and in on_epoch_end (the next epoch follows, or the fit's end). Each call's record holds its own batches
    (a predict the rows it finished, a failed evaluate uncounted), the epoch's its own and its
    100 rows. A failed call's phase stayed open before the fix: it took the rest of the epoch's
    training time, a predict's record said 0 samples, the epoch's count took in the evaluate's."""
    ledger, model = Ledger(out), tiny_model()
    energy = ledger.callback()
    plan = {  # (epoch, batch or "end") -> the calls made there: (how, failing batch)
        (0, 1): [("evaluate", None), ("predict", None)], (0, "end"): [("evaluate", None), ("predict", None)],
        (1, 1): [("evaluate", 1), ("evaluate", None)], (1, 3): [("predict", 1)], (1, "end"): [("evaluate", 2)],
        (2, 1): [("predict", 0), ("predict", None)], (2, 3): [("evaluate", 0)], (2, "end"): [("predict", 2)],
    }

    class User(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            for how, fail_at in plan.get((self.epoch, batch), []):
                ledger.nested(self.model, energy, how, fail_at)  # (on JAX self.model has the fit's state put back)

        def on_epoch_end(self, epoch, logs=None):
            for how, fail_at in plan.get((epoch, "end"), []):
                ledger.nested(self.model, energy, how, fail_at)

    for epoch in range(3):
        ledger.samples[("train", epoch)], ledger.samples[("validation", epoch)] = TRAIN, VAL
    ledger.fit(model, energy, extra=[User()], epochs=3, validation_data=(XV, YV), context=f"{BACKEND} nested_calls")


def another_models_calls(out: Path) -> None:
    """A callback evaluates and predicts with another model (an EMA copy, a teacher) inside the fit,
    passing the EnergyCallback on, after a training batch and in on_epoch_end. Keras points the
    callback's ``model`` at each call's model: before the fix it stayed on the other one, and the
    later epochs counted its loss tracker (30 samples, not 100) and its optimizer's step (0, not 8)."""
    ledger, model, other = Ledger(out), tiny_model(), tiny_model()
    energy = ledger.callback()

    class User(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                ledger.nested(other, energy, "evaluate")
                ledger.nested(other, energy, "predict")

        def on_epoch_end(self, epoch, logs=None):
            ledger.nested(other, energy, "evaluate")

    for epoch in range(3):
        ledger.samples[("train", epoch)], ledger.samples[("validation", epoch)] = TRAIN, VAL
    ledger.fit(model, energy, extra=[User()], epochs=3, validation_data=(XV, YV), context=f"{BACKEND} another model")


def notebook_loop(out: Path) -> None:
    """One epoch per call, fit(epochs=i + 1, initial_epoch=i), with validation_split=0.2, sample
    weights, ReduceLROnPlateau and EarlyStopping(restore_best_weights=True), a callback evaluating
    in on_epoch_end; then one more with a new EnergyCallback. One run: every total continues it,
    samples are the 80 training and 20 validation rows (not their weights)."""
    ledger, model = Ledger(out, update_freq=3), tiny_model()  # 3 batches a fit: TensorBoard writes the epoch's
    energy, weights = ledger.callback(), np.linspace(0.0, 3.0, TRAIN, dtype="float32")

    class EvaluateAtEpochEnd(keras.callbacks.Callback):
        def __init__(self, energy: EnergyCallback) -> None:
            super().__init__()
            self.energy = energy

        def on_epoch_end(self, epoch, logs=None):
            ledger.nested(self.model, self.energy, "evaluate")

    run_id = None
    for epoch in range(4):
        callback = energy if epoch < 3 else ledger.callback()
        ledger.samples[("train", epoch)], ledger.samples[("validation", epoch)] = 80, 20
        extra = [keras.callbacks.ReduceLROnPlateau(patience=0, min_delta=10.0),
                 keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True), EvaluateAtEpochEnd(callback)]
        ledger.fit(model, callback, extra=extra, epochs=epoch + 1, initial_epoch=epoch, validation_split=0.2,
                   sample_weight=weights, context=f"{BACKEND} notebook_loop epoch {epoch}")
        assert run_id in (None, callback.tracker.run_id), (run_id, callback.tracker.run_id)
        run_id = callback.tracker.run_id


def terminate_on_nan(out: Path) -> None:
    """A NaN loss in the second batch: TerminateOnNaN stops the epoch there (64 rows trained, and
    validated); where Keras has raise_error=True (3.11+), a fit raising there (in the second batch's
    end hook, after it trained) is recorded partial with its 64 rows: NumPy arrays' batches fix them."""
    ledger, model = Ledger(out), tiny_model()
    energy, labels = ledger.callback(), Y.copy()
    labels[BATCH + 3] = np.nan
    ledger.samples[("train", 0)], ledger.samples[("validation", 0)] = 2 * BATCH, VAL
    ledger.fit(model, energy, y=labels, extra=[keras.callbacks.TerminateOnNaN()], epochs=3, validation_data=(XV, YV),
               shuffle=False, context=f"{BACKEND} TerminateOnNaN")
    if "raise_error" not in inspect.signature(keras.callbacks.TerminateOnNaN).parameters:
        return
    ledger, model = Ledger(out / "raises"), tiny_model()
    energy = ledger.callback()
    ledger.samples[("train", 0)] = 2 * BATCH
    try:
        model.fit(X, labels, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                  callbacks=[energy, ledger.clocked(), keras.callbacks.TerminateOnNaN(raise_error=True)])
    except RuntimeError:
        pass
    else:
        raise AssertionError("TerminateOnNaN(raise_error=True) did not raise")
    watch.settle()
    ledger.check(energy.tracker.run_id, f"{BACKEND} TerminateOnNaN(raise_error=True)")


if __name__ == "__main__":
    assert KERAS_VERSION >= (3, 0)
    run_scenarios(globals())
