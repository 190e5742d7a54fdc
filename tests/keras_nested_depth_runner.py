"""Calls inside calls inside the fit, on one backend, in a process of its own
(``test_keras_nested_depth.py``):

    python tests/keras_nested_depth_runner.py <backend> <out_dir> <seeds, comma-separated>

Each seed draws fits of 3 epochs whose user callback makes ``evaluate`` / ``predict`` calls (of the
fit's model or of another one, an EMA copy, given the EnergyCallback) after a training batch, in
the fit's validation and in ``on_epoch_end``; each such call's own callback makes more of them at
its batches, to a depth of 3. Calls raise at a batch (after those made there), and the exception
is caught by the callback that made the call or by one further out (so the calls in between fail
too); the fit always goes on. On a fake clock that only batches advance, one second each at 50 W,
after each fit: no phase is left open (the callback's nor the tracker's), and the callback points
at the fit's model; each record holds its own batches' seconds and samples (a finished call all
its rows, a failed predict the rows of the batches it finished, a failed evaluate uncounted); the
summary and the report hold every second of the run; ``History`` and ``CSVLogger`` the run's total
at each epoch's end; every training record the optimizer's step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import sys
from pathlib import Path

from keras_runner_common import BACKEND, ITEMS, OUT, TRAIN, VAL, X, XV, Y, YV, run_jobs  # first: it picks the backend

import keras  # noqa: E402
import pytest  # noqa: E402

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.cli import main as cli_main  # noqa: E402
from greencallbacks.keras import EnergyCallback  # noqa: E402
from greencallbacks.tracker import SUMMARY_FILE  # noqa: E402
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

KWH_PER_S = 50.0 / 3.6e6
BATCH = 32  # training: 3 full batches and one of 4
SMALL = 10  # validation's and every nested call's batch size: 3 batches of VAL = 30 rows
EPOCHS, DEPTH = 3, 3


class Boom(Exception):
    """A nested call's failing batch raises it; ``catcher``: the level whose callback catches it
    (0: the fit's callback that made the outermost of those calls; d: the callback of the call at depth d)."""

    def __init__(self, catcher: int) -> None:
        super().__init__(f"caught at level {catcher}")
        self.catcher = catcher


def csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def draw_call(rng: random.Random, depth: int) -> dict:
    """One nested call: how, whose model, its failing batch (None: none) and who catches, its calls by batch."""
    call = {"how": rng.choice(["evaluate", "predict"]), "model": rng.choice(["fit", "other"]),
            "fail_at": rng.choice([None, None, 0, 1, 2]), "children": {}}
    call["catcher"] = rng.randrange(depth)  # an ancestor's level: the fit's callback is level 0
    if depth < DEPTH:
        for batch in range(3):
            if rng.random() < 0.45:
                call["children"][batch] = [draw_call(rng, depth + 1) for _ in range(rng.choice([1, 1, 2]))]
    return call


def draw_plan(rng: random.Random) -> dict:
    """(epoch, site) -> the calls made there; a site: ("train", batch), ("val", batch) or "end"."""
    plan = {}
    for epoch in range(EPOCHS):
        for site in [("train", b) for b in range(4)] + [("val", b) for b in range(3)] + ["end"]:
            if rng.random() < 0.3:
                plan[(epoch, site)] = [draw_call(rng, 1) for _ in range(rng.choice([1, 2]))]
    return plan


class Ledger:
    """One run's fake seconds by the record they belong to (("train" | "validation", epoch), or
    ("test" | "predict", n) for the n-th nested call), and the samples each record must hold."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.energy_dir, self.csv = out / "energy", out / "log.csv"
        self.clock = FakeClock()
        self.seconds: dict[tuple, int] = {}
        self.samples: dict[tuple, int | None] = {}
        self.total = self.calls = 0
        self.epoch = 0
        self.at_epoch_end: dict[int, int] = {}
        self.model = self.other = self.energy = None

    def tick(self, key: tuple) -> None:
        self.clock.advance(1.0)
        self.total += 1
        self.seconds[key] = self.seconds.get(key, 0) + 1

    def make(self, calls: list[dict], level: int) -> None:
        """The calls a callback at ``level`` makes at one place; a Boom for this level is caught here."""
        for call in calls:
            try:
                self.nested(call, level + 1)
            except Boom as boom:
                if boom.catcher != level:
                    raise

    def nested(self, call: dict, depth: int) -> None:
        self.calls += 1
        key, ledger = ("test" if call["how"] == "evaluate" else "predict", self.calls), self
        finished = [-1]  # the last batch whose end hooks began (the EnergyCallback's, first, ran)

        class Tick(keras.callbacks.Callback):
            def on_test_batch_begin(self, batch, logs=None):
                ledger.tick(key)

            on_predict_batch_begin = on_test_batch_begin

            def on_test_batch_end(self, batch, logs=None):
                finished[0] = batch
                ledger.make(call["children"].get(batch, []), depth)
                if batch == call["fail_at"]:
                    raise Boom(call["catcher"])

            on_predict_batch_end = on_test_batch_end

        model = self.model if call["model"] == "fit" else self.other
        if hasattr(model, "jax_state_sync"):  # as a callback's `self.model` does on JAX: its variables, mid-loop
            model.jax_state_sync()
        data = (XV, YV) if call["how"] == "evaluate" else (XV,)
        self.samples[key] = None  # until it returns: failed (an evaluate uncounted)
        try:
            getattr(model, call["how"])(*data, batch_size=SMALL, verbose=0, callbacks=[self.energy, Tick()])
        except Boom:
            if call["how"] == "predict":  # the rows of the batches it finished
                self.samples[key] = (finished[0] + 1) * SMALL
            raise
        self.samples[key] = VAL

    def user(self, plan: dict) -> keras.callbacks.Callback:
        """The fit's clock and the user's callback that makes the plan's calls, after the EnergyCallback."""
        ledger = self

        class User(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                ledger.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                ledger.tick(("train", ledger.epoch))

            def on_train_batch_end(self, batch, logs=None):
                ledger.make(plan.get((ledger.epoch, ("train", batch)), []), 0)

            def on_test_batch_begin(self, batch, logs=None):
                ledger.tick(("validation", ledger.epoch))

            def on_test_batch_end(self, batch, logs=None):
                ledger.make(plan.get((ledger.epoch, ("val", batch)), []), 0)

            def on_epoch_end(self, epoch, logs=None):
                ledger.at_epoch_end[epoch] = ledger.total
                ledger.make(plan.get((epoch, "end"), []), 0)

        return User()

    def fit(self, plan: dict, context: str) -> None:
        self.model, self.other = tiny_model(), tiny_model()
        self.energy = EnergyCallback(sensors=[ScriptedSensor("gpu", self.clock, 50.0)], intensity=300.0,
                                     output_dir=self.energy_dir)
        for epoch in range(EPOCHS):
            self.samples[("train", epoch)], self.samples[("validation", epoch)] = TRAIN, VAL
        rows_before = len(csv_rows(self.csv))
        history = self.model.fit(X, Y, batch_size=BATCH, epochs=EPOCHS, validation_data=(XV, YV),
                                 validation_batch_size=SMALL, verbose=0,
                                 callbacks=[self.energy, self.user(plan), keras.callbacks.CSVLogger(str(self.csv))])
        energy = self.energy
        assert not meter_threads() and not energy.session.running, context
        assert energy._phases == [], (energy._phases, context)  # no phase left open
        assert energy.model is self.model, context  # pointed back at the fit's model
        self.check(energy.tracker.run_id, context)
        wanted = {e: round(s, 6) for e, s in self.at_epoch_end.items()}
        rows = csv_rows(self.csv)[rows_before:]
        logged = {"History": dict(zip(history.epoch, history.history["energy_kwh_total"], strict=True)),
                  "CSVLogger": {int(r["epoch"]): float(r["energy_kwh_total"]) for r in rows}}
        for logger, totals in logged.items():
            got = {e: round(v / KWH_PER_S, 6) for e, v in totals.items()}
            assert got == wanted, (logger, "expected seconds", wanted, "got", got, context)

    def check(self, run_id: str, context: str) -> None:
        records = check_run(run_id, [self.energy_dir], context=context)
        got, wanted = [], [(key[0], key[1] if key[0] in ("train", "validation") else None, float(s), self.samples[key])
                           for key, s in self.seconds.items()]
        wanted += [(key[0], None, 0.0, self.samples[key]) for key in self.samples  # a call that ran no batch
                   if key not in self.seconds and key[0] in ("test", "predict")]
        for r in records:
            assert not r.phase == "other" or r.energy_kwh == 0, (repr(r), context)  # no batch ran in a gap
            if r.phase == "other":
                continue
            got.append((r.phase, r.epoch, round(r.energy_kwh / KWH_PER_S, 6), r.samples if r.samples_counted else None))
            if r.phase == "train":  # the fit's optimizer step: its training batches so far
                steps = sum(s for (phase, epoch), s in self.seconds.items() if phase == "train" and epoch <= r.epoch)
                assert r.step == steps, ("step", repr(r), steps, context)
        missing = sorted(set(wanted) - set(got), key=repr)
        extra = sorted(set(got) - set(wanted), key=repr)
        assert sorted(got, key=repr) == sorted(wanted, key=repr), ("expected, not recorded", missing,
                                                                   "recorded, not expected", extra, context)
        summary = json.loads((self.energy_dir / SUMMARY_FILE).read_text())
        assert summary["run_id"] == run_id, context
        assert summary["energy_kwh"] == pytest.approx(self.total * KWH_PER_S, rel=1e-9), context
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli_main(["report", str(self.energy_dir), "--run-id", run_id, "--format", "json"]) == 0
        (config,) = json.loads(out.getvalue())["configurations"]
        assert config["run_totals"][run_id]["energy_kwh"] == pytest.approx(self.total * KWH_PER_S, rel=1e-9), context


def flow(seed: int) -> None:
    rng = random.Random(seed)
    plan = draw_plan(rng)
    print(f"{BACKEND} seed {seed}: {plan}", file=sys.stderr)
    Ledger(OUT / f"seed{seed}").fit(plan, f"{BACKEND} seed {seed}")


if __name__ == "__main__":
    run_jobs({f"seed {item}": (lambda seed=int(item): flow(seed)) for item in ITEMS})
