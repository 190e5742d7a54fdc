"""Budgets and embodied emissions with the real frameworks (CPU).

A scripted GPU sensor on a fake clock makes energy exact: every training batch advances the
clock by one second at ``POWER_W``, so each epoch costs exactly ``EPOCH_KWH`` and validation,
checkpoints and gaps cost nothing. The budgets' limits are then met at known epochs:

* by the run total: ``TOTAL_KWH`` is passed during epoch 2 (80 % warning at epoch 1);
* by the prediction: ``PREDICTED_KWH`` is below what four epochs use, but once the prediction
  has two complete epochs after warm-up (at the end of epoch 3) its whole interval lies above it.

Each run must stop at that epoch the framework's own way, with that epoch's checkpoint written,
the reason in the summary and the logged ``budget_stop``; a resumed run stops again at once
without repeating its warnings. The sensor reports an H100, so records carry embodied CO2eq.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greencallbacks import Budget
from greencallbacks.meter import EnergyWarning
from greencallbacks.records import read_records
from greencallbacks.sensors.base import Kind
from tests.fakes.scripted import FakeClock, ScriptedSensor

from lightning_models import BATCH, TRAIN_SAMPLES, flavour, loaders, trainer_kwargs

pytestmark = pytest.mark.slow

POWER_W = 3600.0  # one fake second per batch: 1 Wh per batch
MODEL = "NVIDIA H100 80GB HBM3"
EPOCHS = 10
EPOCH_KWH = 0.001 * (TRAIN_SAMPLES // BATCH)  # Lightning: 4 batches per epoch


class H100(ScriptedSensor):
    """The scripted sensor, described like NVML describes an H100 (the embodied table's key)."""

    def describe(self) -> dict:
        return {**super().describe(), "model": MODEL}


def sensor(clock) -> H100:
    return H100("gpu0", clock, power_w=POWER_W, kind=Kind.GPU)


def energy_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning) and "budget" in str(w.message)]


def read_csv(path) -> list[dict]:
    import csv

    if not Path(path).exists():  # a logger that was never given a value writes no file
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------ Lightning
def lightning_fit(tmp_path, budget, *, max_epochs=EPOCHS, ckpt_path=None, version="first", log_every_n_steps=0):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    clock = FakeClock()

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0, budget=budget)
    checkpoint = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, save_last=True, save_on_train_epoch_end=True
    )
    logger = L.loggers.CSVLogger(tmp_path, name="csv", version=version)
    trainer = L.Trainer(
        max_epochs=max_epochs, logger=logger, callbacks=[callback, Tick(), checkpoint],
        **trainer_kwargs(enable_checkpointing=True, log_every_n_steps=log_every_n_steps),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)
    rows = [r for r in read_csv(Path(logger.log_dir) / "metrics.csv") if r.get("budget_stop")]
    return trainer, callback, rows, energy_warnings(caught)


def assert_stopped_at(tmp_path, trainer, rows, epoch: int, reason_word: str):
    records = read_records(tmp_path / "energy")
    assert [r.epoch for r in records if r.phase == "train"] == list(range(epoch + 1))
    assert all(not r.partial for r in records)
    assert trainer.should_stop and trainer.current_epoch == epoch + 1  # ended cleanly after that epoch
    # That epoch's checkpoint is written and whole; no later one.
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("epoch=*.ckpt")) == [f"epoch={e}.ckpt" for e in range(epoch + 1)]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["epoch"] == epoch and "state_dict" in last
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["budget"]["stopped"] is True and reason_word in summary["budget"]["reason"]
    assert [float(r["budget_stop"]) for r in rows] == [0.0] * epoch + [1.0]  # the logged stop
    return records, summary, last


def test_lightning_budget_reached_by_the_total_stops_after_that_epoch_and_a_resume_stops_at_once(tmp_path):
    budget = Budget(kwh=0.0095, on_exceed="stop")  # epoch 1: 0.008 kWh (84 %), epoch 2: 0.012 kWh
    trainer, callback, rows, said = lightning_fit(tmp_path, budget)
    records, summary, last = assert_stopped_at(tmp_path, trainer, rows, 2, "reached the budget")
    assert len(said) == 2 and "84 %" in said[0] and said[1].endswith("stopping training")
    assert [float(r["budget_used_fraction"]) for r in rows] == pytest.approx([e * EPOCH_KWH / 0.0095 for e in (1, 2, 3)])
    logged_embodied = [float(r["embodied_co2eq_g_total"]) for r in rows]  # the loggers get it too
    assert len(logged_embodied) == 3 and 0 < logged_embodied[0] < logged_embodied[1] < logged_embodied[2]
    assert summary["energy_kwh"] == pytest.approx(3 * EPOCH_KWH, rel=1e-9)
    assert budget.stopped is False  # the user's object is a template; each run checks its own copy
    # The checkpoint holds the stopped budget: resumed with more epochs to go, it stops before any.
    assert last["callbacks"][callback.state_key]["budget"]["stopped"] is True
    again, _, rows_again, said_again = lightning_fit(
        tmp_path, budget, ckpt_path=tmp_path / "ckpt" / "last.ckpt", version="resumed"
    )
    assert said_again == []  # warnings are not repeated
    assert rows_again == []  # no epoch ran, so none was logged
    assert [r.epoch for r in read_records(tmp_path / "energy") if r.phase == "train"] == [0, 1, 2]
    resumed_summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert resumed_summary["attempts"] == 2 and resumed_summary["budget"]["stopped"] is True
    # Embodied CO2eq rides along, apart from the operational figure and never added to it.
    assert summary["co2eq_g"] == pytest.approx(sum(r.co2eq_g for r in records), rel=1e-9)
    assert summary["embodied_co2eq_g"] == pytest.approx(sum(r.embodied_co2eq_g for r in records), rel=1e-9)
    assert summary["embodied_co2eq_g_low"] < summary["embodied_co2eq_g"] < summary["embodied_co2eq_g_high"]
    assert summary["embodied_sources"][0]["key"] == "H100 SXM"
    # The report states both parts and their sum, each apart.
    from greencallbacks import report

    text = report.render(records, "md")
    assert "## Operational and embodied CO2eq" in text and "- Operational + embodied:" in text
    assert "manufacturing footprint amortised over the run adds" in report.statement(records)
    both = report.summary(records)["embodied"]["operational_plus_embodied_co2eq_g"]["mean"]
    import csv
    import io

    per_epoch = [float(row["embodied_co2eq_g"]) for row in csv.DictReader(io.StringIO(report.render(records, "csv")))]
    assert per_epoch == pytest.approx([r.embodied_co2eq_g for r in records if r.phase == "train"], rel=1e-9)
    assert both == pytest.approx(summary["co2eq_g"] + summary["embodied_co2eq_g"], rel=1e-9)


def test_lightning_budget_exceeded_by_the_prediction_stops_at_the_first_confident_prediction(tmp_path):
    # Ten epochs would use 0.04 kWh. The total never reaches 80 % of 0.03 before epoch 5, but at
    # the end of epoch 3 epochs 1 and 2 are complete after warm-up and the prediction is 0.04.
    budget = Budget(kwh=0.03, on_exceed="stop")
    trainer, _, rows, said = lightning_fit(tmp_path, budget)
    records, summary, _ = assert_stopped_at(tmp_path, trainer, rows, 3, "predicted energy 0.04 kWh")
    assert summary["energy_kwh"] == pytest.approx(4 * EPOCH_KWH, rel=1e-9)
    assert summary["energy_kwh"] < 0.8 * 0.03  # the total alone would have gone on
    assert len(said) == 1 and "exceeds the budget" in said[0]


def test_lightning_a_step_log_that_reaches_the_budget_stops_after_that_batch(tmp_path):
    # Logged every step, the live total passes 0.0095 kWh two batches into epoch 2 (the batch just
    # ended is ticked after this callback): on one process the stop comes then, after that batch,
    # not at the epoch's end (a fine-tune of one long epoch overran by up to an epoch).
    budget = Budget(kwh=0.0095, on_exceed="stop")
    trainer, _, rows, said = lightning_fit(tmp_path, budget, log_every_n_steps=1)
    assert said[1:] == ["greencallbacks: energy total 0.01 kWh reached the budget of 0.0095 kWh; stopping training"]
    records, summary, _ = assert_stopped_at(tmp_path, trainer, rows, 2, "reached the budget")  # its checkpoint too
    epoch_2 = [r for r in records if r.phase == "train" and r.epoch == 2]
    assert [r.samples for r in epoch_2] == [3 * BATCH]  # three of its four batches ran
    assert summary["energy_kwh"] == pytest.approx(2 * EPOCH_KWH + 0.003, rel=1e-9)
    steps = [float(r["energy_kwh_total"]) for r in read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
             if r.get("energy_kwh_total")]
    assert steps == sorted(steps) and steps[-1] == pytest.approx(summary["energy_kwh"], rel=1e-9)
    # Resumed from the stopped epoch's checkpoint, it stops again before a batch, saying nothing.
    _, _, rows_again, said_again = lightning_fit(tmp_path, budget, ckpt_path=tmp_path / "ckpt" / "last.ckpt",
                                                 version="resumed", log_every_n_steps=1)
    assert said_again == [] and rows_again == []
    assert [r.samples for r in read_records(tmp_path / "energy") if r.phase == "train"] == [TRAIN_SAMPLES, TRAIN_SAMPLES, 3 * BATCH]


def test_lightning_warn_only_budget_logs_and_trains_on(tmp_path):
    trainer, _, rows, said = lightning_fit(tmp_path, Budget(kwh=0.0095), max_epochs=4)
    assert not trainer.should_stop and len(rows) == 4
    assert [float(r["budget_stop"]) for r in rows] == [0.0] * 4
    assert len(said) == 2 and "84 %" in said[0] and "reached" in said[1]  # each once, no "stopping"
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["budget"]["stopped"] is False and summary["budget"]["reason"].startswith("energy total")


def test_budget_and_embodied_settings_fail_at_construction():
    _, EnergyCallback, _ = flavour("lightning.pytorch")
    with pytest.raises(ValueError, match="budget must be a greencallbacks.Budget"):
        EnergyCallback(budget={"kwh": 1})
    with pytest.raises(ValueError, match="host_share"):
        EnergyCallback(embodied={"host": "server", "host_share": 2})
    with pytest.raises(ValueError, match="embodied must be"):
        EnergyCallback(embodied={"lifetime": 4})


@pytest.fixture()
def pauses_asked(monkeypatch):
    """Counts the carbon-aware pauses the adapter asks for (a pause with none configured is 0 s)."""
    from greencallbacks.session import EnergySession

    asked = []
    pause = EnergySession.pause_between_epochs
    monkeypatch.setattr(EnergySession, "pause_between_epochs", lambda self: asked.append(1) or pause(self))
    return asked


def test_lightning_asks_for_no_carbon_aware_pause_after_its_last_epoch(tmp_path, pauses_asked):
    """A pause after the epoch that stopped the run (the budget spent, max_epochs) idled up to the
    pause's whole delay budget before the fit returned, billed beyond the budget."""
    lightning_fit(tmp_path, Budget(kwh=0.0095, on_exceed="stop"))  # stops after epoch 2
    assert len(pauses_asked) == 2  # before epochs 1 and 2; 3 before the fix
    lightning_fit(tmp_path / "plain", None, max_epochs=2)
    assert len(pauses_asked) == 3


# ---------------------------------------------------------------------------------- HF Trainer
def hf_train(tmp_path, budget, *, resume=None):
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from hf_tiny import TokenDataset, tiny_model, training_args

    clock = FakeClock()

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.advance(1.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0, budget=budget)
    args = training_args(tmp_path / "out", num_train_epochs=EPOCHS, save_strategy="epoch", eval_strategy="no")
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(30), callbacks=[callback, Tick()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=resume)
    logged = [entry for entry in trainer.state.log_history if "budget_stop" in entry]
    return trainer, logged, energy_warnings(caught)


HF_STEPS = 4  # 30 samples in batches of 8


@pytest.mark.parametrize(
    "limit, stop_epoch, reason",
    [(0.0095, 2, "reached the budget"), (0.03, 3, "predicted energy 0.04 kWh")],
    ids=["total", "prediction"],
)
def test_hf_budget_stops_after_the_epoch_with_its_checkpoint_and_a_resume_stops_again(tmp_path, limit, stop_epoch, reason,
                                                                                    pauses_asked):
    trainer, logged, said = hf_train(tmp_path, Budget(kwh=limit, on_exceed="stop"))
    steps = (stop_epoch + 1) * HF_STEPS
    assert len(pauses_asked) == stop_epoch  # carbon-aware pauses: before each epoch that follows one
    assert trainer.state.global_step == steps and trainer.control.should_training_stop
    assert [entry["budget_stop"] for entry in logged] == [0.0] * stop_epoch + [1.0]
    # That epoch's checkpoint is saved by the Trainer as usual (save_strategy="epoch"), and no later one.
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "out").glob("checkpoint-*"))
    assert checkpoints == [HF_STEPS * (e + 1) for e in range(stop_epoch + 1)]
    saved = json.loads((tmp_path / "out" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["EnergyCallback"]["attributes"]["energy_state"]["budget"]["stopped"] is True
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["budget"]["stopped"] and reason in summary["budget"]["reason"]
    assert said[-1].endswith("stopping training")
    records = read_records(tmp_path / "energy")
    assert [r.epoch for r in records if r.phase == "train"] == list(range(stop_epoch + 1))
    assert all(r.embodied_co2eq_g is not None and r.embodied_co2eq_g >= 0 for r in records)

    # Resumed with the same budget: it stops after the one step the Trainer runs before reading
    # the flag, and says nothing it said before.
    again, _, said_again = hf_train(tmp_path, Budget(kwh=limit, on_exceed="stop"), resume=tmp_path / "out" / f"checkpoint-{steps}")
    assert said_again == []
    assert again.state.global_step == steps + 1
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["attempts"] == 2 and summary["budget"]["stopped"] is True


def test_hf_a_step_log_that_reaches_the_budget_stops_a_long_epoch_there(tmp_path):
    """One epoch of 40 steps (``max_steps``) logged every 5: the live total reaches the limit at
    step 25's log, and the Trainer stops after that step, not 15 steps later at the epoch's end.
    A resume from the checkpoint before the stop stops again (the run's records hold the 25 steps)."""
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from hf_tiny import TokenDataset, tiny_model, training_args

    def train(resume=None):
        clock = FakeClock()

        class Tick(TrainerCallback):  # after EnergyCallback: a step's log sees the steps before it
            def on_step_end(self, args, state, control, **kwargs):
                clock.advance(1.0)

        callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0,
                                  budget=Budget(kwh=0.023, on_exceed="stop"))
        args = training_args(tmp_path / "out", max_steps=40, logging_strategy="steps", logging_steps=5,
                             save_strategy="steps", save_steps=10, eval_strategy="no")
        trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(320), callbacks=[callback, Tick()])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train(resume_from_checkpoint=resume)
        return trainer, energy_warnings(caught)

    trainer, said = train()
    assert trainer.state.global_step == 25
    assert said == ["greencallbacks: energy total 0.019 kWh is 83 % of the budget of 0.023 kWh",
                    "greencallbacks: energy total 0.024 kWh reached the budget of 0.023 kWh; stopping training"]
    totals = [e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e]
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(0.025, rel=1e-9) and summary["budget"]["stopped"]
    assert len(totals) >= 6 and totals == sorted(totals) and totals[-1] == pytest.approx(summary["energy_kwh"], rel=1e-9)
    assert [r.samples for r in read_records(tmp_path / "energy") if r.phase == "train"] == [25 * 8]

    # Its checkpoint holds a budget not yet stopped: the stop is decided anew, and said once (the
    # warnings given before are not repeated).
    again, said_again = train(resume=tmp_path / "out" / "checkpoint-20")
    assert said_again == ["greencallbacks: energy total 0.025 kWh reached the budget of 0.023 kWh; stopping training"]
    assert again.state.global_step == 21  # one step: the Trainer reads the flag after it
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["attempts"] == 2 and summary["energy_kwh"] == pytest.approx(0.026, rel=1e-9)


# ---------------------------------------------------------------------------------------- Keras
KERAS_RUNNER = Path(__file__).with_name("keras_budget_runner.py")


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    pytest.importorskip("keras", reason="Keras is not installed")
    out = tmp_path_factory.mktemp("keras_budget")
    done = subprocess.run(
        [sys.executable, str(KERAS_RUNNER), "torch", str(out)], capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), out


@pytest.mark.parametrize("scenario, stop_epoch, reason, steps", [
    ("total", 2, "reached the budget", 12), ("prediction", 3, "exceeds the budget", 16),
    ("step", 2, "0.01 kWh reached the budget", 11),  # at a TensorBoard batch log: three batches into epoch 2
])
def test_keras_budget_stops_after_the_epoch_with_its_checkpoint_and_a_resume_stops_again(keras_results, scenario, stop_epoch,
                                                                                       reason, steps):
    results, out = keras_results
    first, resumed = results[scenario]["first"], results[scenario]["resumed"]
    assert first["epochs"] == list(range(stop_epoch + 1)) and first["stop_training"]
    assert first["pauses_asked"] == stop_epoch and resumed["pauses_asked"] == 0  # none after the stop
    assert first["steps"] == steps
    train = [r for r in read_records(out / scenario / "energy") if r.phase == "train"]
    assert [r.samples for r in train] == [100] * stop_epoch + [min(100, 32 * (steps - 4 * stop_epoch))] + [32]  # + the resume's batch
    assert first["budget_stop"] == [0.0] * stop_epoch + [1.0]
    # ModelCheckpoint (after EnergyCallback) saved the stopping epoch too, and the file loads.
    assert first["checkpoints"] == [f"epoch{e + 1}.keras" for e in range(stop_epoch + 1)]
    assert reason in first["warnings"][-1] and first["warnings"][-1].endswith("stopping training")
    assert len(first["embodied"]) == stop_epoch + 1 and first["embodied"] == sorted(first["embodied"])
    # The resumed fit (energy-state.json) stops after its first batch and repeats no warning.
    assert resumed["warnings"] == [] and resumed["steps"] == 1 and resumed["budget_stop"] == [1.0]
    summary = json.loads((out / scenario / "energy" / "energy-summary.json").read_text())
    assert summary["budget"]["stopped"] and summary["attempts"] == 2
    assert summary["embodied_co2eq_g"] > 0 and summary["co2eq_g"] == pytest.approx(
        sum(r.co2eq_g for r in read_records(out / scenario / "energy")), rel=1e-9
    )
