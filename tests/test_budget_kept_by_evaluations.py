"""A run's budget survives the calls measured without it: a ``test`` in a later Lightning session,
a Keras ``evaluate`` with an ``EnergyCallback`` written inline, each with no ``budget=``.

Such a call continues the run (its next attempt) and rewrites its summary, and in Keras its
``energy-state.json``. It wrote them without the budget: the summary lost the budget's stop and
warnings (so ``greencallbacks report`` no longer said the budget stopped the training), and a
Keras resume with the budget, finding none saved, judged it afresh and gave its stop warning
again. The budget is now passed on by such a call, its use counting the call's energy; a training
resumed without the budget leaves it out of the summary, which then describes a run trained on
past it.
"""

from __future__ import annotations

import json
import textwrap
import warnings

import pytest

pytest.importorskip("torch")

from greencallbacks import Budget
from greencallbacks.records import read_records
from greencallbacks.report.data import budget_notes
from tests.fakes.scripted import FakeClock
from tests.test_budget_frameworks import EPOCH_KWH, energy_warnings, lightning_fit, sensor

from keras_runs import run_keras
from lightning_models import flavour, loaders, trainer_kwargs

pytestmark = pytest.mark.slow

LIMIT_KWH = 0.0095  # reached at epoch 2 (3 epochs of 0.004 kWh); 84 % warned at epoch 1


def summary_of(directory) -> dict:
    return json.loads((directory / "energy-summary.json").read_text())


def lightning_call(tmp_path, what: str, budget=None):
    """``what`` ("test" or "fit" to 5 epochs) from the run's last checkpoint, in a new Trainer
    whose EnergyCallback has ``budget`` (None: none)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    clock = FakeClock()

    class Tick(L.Callback):  # one fake second per training batch, as in lightning_fit
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0, budget=budget)
    trainer = L.Trainer(max_epochs=5, callbacks=[callback, Tick()], logger=False, **trainer_kwargs())
    last = tmp_path / "ckpt" / "last.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if what == "test":
            trainer.test(TinyModel(), loaders()[1], ckpt_path=last, verbose=False)
        else:
            trainer.fit(TinyModel(), *loaders(), ckpt_path=last)
    return energy_warnings(caught)


def test_lightning_test_in_a_later_session_keeps_the_runs_budget_in_its_summary(tmp_path):
    lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH, on_exceed="stop"))
    stopped = summary_of(tmp_path / "energy")["budget"]
    assert stopped["stopped"] is True and len(stopped["warnings"]) == 2

    assert lightning_call(tmp_path, "test") == []
    summary = summary_of(tmp_path / "energy")
    assert summary["attempts"] == 2 and "test" in summary["phases"]
    budget = summary.get("budget")
    assert budget is not None, "the test's summary dropped the run's budget"
    assert {k: budget[k] for k in ("limits", "stopped", "reason", "warnings")} == {
        k: stopped[k] for k in ("limits", "stopped", "reason", "warnings")}
    assert budget["used"]["kwh"] == pytest.approx(summary["energy_kwh"], rel=1e-12)  # the test's energy too
    notes = budget_notes(read_records(tmp_path / "energy"), {summary["run_id"]: summary})
    assert len(notes) == 1 and "budget (0.0095 kWh) stopped its training" in notes[0]

    # Resumed with the budget raised to go on: judged afresh, as before.
    assert lightning_call(tmp_path, "fit", Budget(kwh=1.0, on_exceed="stop")) == []
    assert summary_of(tmp_path / "energy")["budget"]["stopped"] is False


def test_lightning_training_resumed_without_the_budget_leaves_it_out_of_the_summary(tmp_path):
    lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH, on_exceed="stop"))
    lightning_call(tmp_path, "fit")  # epochs 3 and 4, past the budget: no longer the run's
    summary = summary_of(tmp_path / "energy")
    assert "budget" not in summary
    assert summary["energy_kwh"] == pytest.approx(5 * EPOCH_KWH, rel=1e-9)


KERAS = textwrap.dedent("""
    import json, sys, warnings
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import keras, numpy as np
    from greencallbacks import Budget
    from greencallbacks.keras import EnergyCallback
    from greencallbacks.meter import EnergyWarning
    from greencallbacks.sensors.base import Kind
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    x = np.random.default_rng(0).random((100, 8), dtype=np.float32)
    y = x[:, :1]
    clock = FakeClock()

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            clock.advance(1.0)

        def on_test_batch_end(self, batch, logs=None):
            clock.advance(1.0)

    def energy(budget=None):  # written inline at each call, as Keras users do
        return EnergyCallback(output_dir="energy", sensors=[ScriptedSensor("gpu0", clock, power_w=3600.0, kind=Kind.GPU)],
                              intensity=100.0, budget=budget)

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    out = {}
    def call(name, run):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
        out[name] = {"said": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)
                              and "budget" in str(w.message)],
                     "summary": json.loads(Path("energy/energy-summary.json").read_text())}
    call("fit", lambda: model.fit(x, y, batch_size=32, epochs=10, verbose=0,
                                  callbacks=[energy(Budget(kwh=%r, on_exceed="stop")), Tick()]))
    call("evaluate", lambda: model.evaluate(x, y, batch_size=32, verbose=0, callbacks=[energy(), Tick()]))
    call("resumed", lambda: model.fit(x, y, batch_size=32, epochs=10, initial_epoch=3, verbose=0,
                                      callbacks=[energy(Budget(kwh=%r, on_exceed="stop")), Tick()]))
    Path("results.json").write_text(json.dumps(out))
""") % (LIMIT_KWH, LIMIT_KWH)


def test_keras_evaluate_with_an_inline_callback_keeps_the_budget_for_the_summary_and_the_resume(tmp_path):
    from pathlib import Path

    repository = str(Path(__file__).resolve().parents[1])
    results = run_keras("torch", tmp_path, "-c", KERAS, repository, purpose="the Keras budget scenario")
    fit, evaluate, resumed = results["fit"], results["evaluate"], results["resumed"]
    assert len(fit["said"]) == 2 and fit["said"][1].endswith("stopping training")
    stopped = fit["summary"]["budget"]
    budget = evaluate["summary"].get("budget")
    assert budget is not None, "evaluate's summary dropped the run's budget"
    assert budget["stopped"] is True and budget["warnings"] == stopped["warnings"]
    assert budget["used"]["kwh"] == pytest.approx(evaluate["summary"]["energy_kwh"], rel=1e-12)
    # The resume stops again at once, saying nothing it said before (it gave the stop warning anew).
    assert resumed["said"] == []
    assert resumed["summary"]["budget"]["warnings"] == stopped["warnings"]
    assert resumed["summary"]["budget"]["stopped"] is True
