"""A budget reached at a step log stops training after that step (one process): the checkpoints,
resumes and statements around such a stop, with real Lightning and HF Trainer on CPU.

The scripted H100 of ``test_budget_frameworks`` on a fake clock: each training batch (HF: each
optimizer step) costs 1 Wh, evaluation and checkpoints nothing, so every figure is exact. After
each fit: the records sum to the summary and to the last total the framework's logger received,
the step values never go down (across a resume too), and the summary's ``budget`` says where
and why the run stopped.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")

from greencallbacks import Budget
from tests import flow_invariants
from tests.fakes.scripted import FakeClock
from tests.test_budget_frameworks import energy_warnings, read_csv, sensor
from tests.test_budget_pause_flows import report_md

from lightning_models import BATCH, flavour, loaders, trainer_kwargs

pytestmark = pytest.mark.slow

LIMIT_KWH = 0.0055  # Lightning, 4 batches (0.004 kWh) an epoch: the log after batch 7 reads 0.006
REACHED = "energy total 0.006 kWh reached the budget of 0.0055 kWh"


def summary_of(out: Path) -> dict:
    return json.loads((out / "energy-summary.json").read_text())


def check_totals(out: Path, run_id: str, logged_kwh: float) -> list:
    records = flow_invariants.check_run(run_id, [out])
    assert summary_of(out)["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    flow_invariants.logged_total_matches(records, logged_kwh, rel=1e-9)
    return records


# ------------------------------------------------------------------------------------ Lightning
def lightning_fit(tmp_path, budget, *, version, ckpt=None, max_epochs=4, checkpoint=None, log_every=1, **trainer):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    clock = FakeClock()

    class Tick(L.Callback):  # after EnergyCallback: a step's log sees the batches before it
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0, budget=budget)
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", save_top_k=-1, save_last=True,
                                        **(checkpoint or {}))
    logger = L.loggers.CSVLogger(tmp_path, name="csv", version=version)
    fit = L.Trainer(max_epochs=max_epochs, logger=logger, callbacks=[callback, Tick(), saver],
                    **trainer_kwargs(enable_checkpointing=True, log_every_n_steps=log_every, **trainer))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(TinyModel(), *loaders(), ckpt_path=tmp_path / "ckpt" / ckpt if ckpt else None)
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    steps = [float(r["energy_kwh_total"]) for r in rows if r.get("energy_kwh_total")]  # in logging order
    epochs = [r for r in rows if r.get("budget_stop")]
    return fit, callback.tracker.run_id, steps, epochs, energy_warnings(caught)


def ckpt_budget(path: Path) -> dict:
    import torch

    state = torch.load(path, weights_only=False)["callbacks"]
    (energy,) = [v for k, v in state.items() if "EnergyCallback" in k]
    return energy["budget"]


@pytest.mark.parametrize("on_epoch_end", [False, True], ids=["save_on_validation", "save_on_train_epoch_end"])
def test_lightning_step_stop_with_step_checkpoints_then_resumes_from_each(tmp_path, on_epoch_end):
    """every_n_train_steps=3: checkpoints at steps 3 and 6; the stop after batch 7 (three of epoch
    1's four) writes none (Lightning saves no epoch end with a step cadence). Resumed from step 3
    with the same budget it stops before a batch (the run has spent 0.007); with a raised one it
    trains on, its totals continuing the run's 0.007."""
    checkpoint = {"every_n_train_steps": 3, "save_on_train_epoch_end": on_epoch_end}
    fit, run_id, steps, epochs, said = lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH, on_exceed="stop"), version="a",
                                                     checkpoint=checkpoint)
    out = tmp_path / "energy"
    assert fit.global_step == 7 and said[-1] == f"greencallbacks: {REACHED}; stopping training"
    assert steps == pytest.approx([0.0, 0.001, 0.002, 0.003, 0.004, 0.004, 0.005, 0.006, 0.007], abs=1e-12)
    records = check_totals(out, run_id, steps[-1])
    assert [(r.epoch, r.samples) for r in records if r.phase == "train"] == [(0, 4 * BATCH), (1, 3 * BATCH)]
    budget = summary_of(out)["budget"]
    assert (budget["stopped"], budget["reason"], budget["used"]["kwh"]) == (True, REACHED, pytest.approx(0.007))
    assert f"budget (0.0055 kWh) stopped its training: {REACHED}" in report_md(out)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step=*.ckpt")) == ["step=3.ckpt", "step=6.ckpt"]
    assert ckpt_budget(tmp_path / "ckpt" / "step=6.ckpt")["stopped"] is False

    # The same budget, from the checkpoint before the stop: the run's 0.007 kWh is over it.
    again, _, steps_again, _, said_again = lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH, on_exceed="stop"), version="b",
                                                         ckpt="step=3.ckpt", checkpoint=checkpoint)
    assert again.global_step == 3 and steps_again == []
    assert said_again == ["greencallbacks: energy total 0.007 kWh reached the budget of 0.0055 kWh; stopping training"]
    check_totals(out, run_id, 0.007)
    assert summary_of(out)["budget"]["stopped"] is True and summary_of(out)["attempts"] == 2

    # Raised: judged against the whole run, and trained to max_epochs from step 3 (13 batches;
    # Lightning 2.2 reruns the checkpoint's last batch, 14).
    raised, _, steps_raised, epochs_raised, said_raised = lightning_fit(
        tmp_path, Budget(kwh=0.05, on_exceed="stop"), version="c", ckpt="step=3.ckpt", checkpoint=checkpoint)
    ran = raised.global_step - 3
    assert ran in (13, 14) and said_raised == []
    assert steps_raised[0] == pytest.approx(0.007) and steps_raised == sorted(steps_raised)
    spent = 0.007 + 0.001 * ran
    assert [float(r["energy_kwh_total"]) for r in epochs_raised][1:] == pytest.approx([spent - 0.008, spent - 0.004, spent])
    records = check_totals(out, run_id, steps_raised[-1])
    assert sum(r.samples for r in records if r.phase == "train" and r.attempt == 2) == ran * BATCH
    budget = summary_of(out)["budget"]
    assert (budget["stopped"], budget["reason"], budget["used"]["kwh"]) == (False, None, pytest.approx(spent))


def test_lightning_step_stop_inside_a_validation_interval_checkpoints_the_stop_and_resumes(tmp_path):
    """val_check_interval=2 with checkpoints on validation: the stop after batch 7 validates and
    saves (step=7.ckpt) a stopped budget; resumed from it nothing runs and nothing is said again;
    raised, it trains the last batch and two epochs on top of the run's 0.007 kWh."""
    kwargs = {"checkpoint": {"save_on_train_epoch_end": False}, "val_check_interval": 2}
    fit, run_id, steps, _, said = lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH, on_exceed="stop"), version="a", **kwargs)
    out = tmp_path / "energy"
    assert fit.global_step == 7 and said[-1].endswith("stopping training")
    check_totals(out, run_id, steps[-1])
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step=*.ckpt")) == [f"step={s}.ckpt" for s in (2, 4, 6, 7)]
    assert ckpt_budget(tmp_path / "ckpt" / "step=7.ckpt")["stopped"] is True

    again, _, steps_again, _, said_again = lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH, on_exceed="stop"), version="b",
                                                         ckpt="step=7.ckpt", **kwargs)
    assert (again.global_step, steps_again, said_again) == (7, [], [])
    raised, _, steps_raised, _, said_raised = lightning_fit(tmp_path, Budget(kwh=0.05, on_exceed="stop"), version="c",
                                                           ckpt="step=7.ckpt", **kwargs)
    assert raised.global_step == 16 and said_raised == []
    assert steps_raised[0] == pytest.approx(0.007) and steps_raised == sorted(steps_raised)
    assert steps_raised[-1] == pytest.approx(0.016)  # 0.007 + 9 batches
    records = check_totals(out, run_id, steps_raised[-1])
    assert summary_of(out)["energy_kwh"] == pytest.approx(0.016) and summary_of(out)["attempts"] == 3
    assert [(r.attempt, r.epoch, r.samples) for r in records if r.phase == "train"] == [
        (0, 0, 32), (0, 1, 24), (2, 1, 8), (2, 2, 32), (2, 3, 32)]


def test_lightning_step_log_with_a_warn_only_budget_trains_every_batch(tmp_path):
    fit, run_id, steps, epochs, said = lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH), version="a", max_epochs=3)
    assert fit.global_step == 12 and not fit.should_stop
    assert said == ["greencallbacks: energy total 0.005 kWh is 91 % of the budget of 0.0055 kWh", f"greencallbacks: {REACHED}"]
    assert [float(r["budget_stop"]) for r in epochs] == [0.0] * 3
    check_totals(tmp_path / "energy", run_id, steps[-1])
    budget = summary_of(tmp_path / "energy")["budget"]
    assert (budget["stopped"], budget["reason"], budget["used"]["kwh"]) == (False, REACHED, pytest.approx(0.012))
    assert "its training went on" in report_md(tmp_path / "energy")


# ---------------------------------------------------------------------------------- HF Trainer
def hf_train(tmp_path, budget, resume=None, **overrides):
    pytest.importorskip("transformers", reason="transformers is not installed")
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from hf_tiny import TokenDataset, tiny_model, training_args

    clock = FakeClock()

    class Tick(TrainerCallback):  # after EnergyCallback: a step's log sees the steps before it
        def on_step_end(self, args, state, control, **kwargs):
            clock.advance(1.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0, budget=budget)
    settings = dict(num_train_epochs=1, logging_strategy="steps", eval_strategy="steps", save_strategy="steps",
                    load_best_model_at_end=True, metric_for_best_model="loss")
    settings.update(overrides)
    trainer = Trainer(model=tiny_model(), args=training_args(tmp_path / "out", **settings), train_dataset=TokenDataset(320),
                      eval_dataset=TokenDataset(16, seed=1), callbacks=[callback, Tick()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=resume)
    first = 0 if resume is None else int(Path(resume).name.split("-")[1])  # the history resumed holds the steps before
    totals = [e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e and e["step"] > first]
    return trainer, callback.tracker.run_id, totals, energy_warnings(caught)


@pytest.mark.parametrize("accumulate, every, samples_per_step", [(1, 5, 8), (2, 3, 16)], ids=["plain", "accumulated"])
def test_hf_step_stop_with_step_evaluation_and_checkpoints_then_a_raised_resume(tmp_path, accumulate, every, samples_per_step):
    """Logged, evaluated and saved every ``every`` optimizer steps, a 0.0135 kWh budget is reached
    at step 15's log (0.014 kWh) and the Trainer stops after step 15, which it evaluates and saves.
    A raised budget resumed from that latest checkpoint trains the epoch's rest on top of 0.015."""
    steps_in_epoch = 320 // (8 * accumulate)
    args = dict(gradient_accumulation_steps=accumulate, logging_steps=every, eval_steps=every, save_steps=every)
    trainer, run_id, totals, said = hf_train(tmp_path, Budget(kwh=0.0135, on_exceed="stop"), **args)
    out = tmp_path / "energy"
    assert trainer.state.global_step == 15
    assert said[-1] == "greencallbacks: energy total 0.014 kWh reached the budget of 0.0135 kWh; stopping training"
    assert totals == sorted(totals) and totals[-1] == pytest.approx(0.015)
    records = check_totals(out, run_id, totals[-1])
    assert [r.samples for r in records if r.phase == "train"] == [15 * samples_per_step]
    assert len([r for r in records if r.phase == "validation"]) == 15 // every
    budget = summary_of(out)["budget"]
    assert (budget["stopped"], budget["used"]["kwh"]) == (True, pytest.approx(0.015)) and "0.014 kWh reached" in budget["reason"]
    assert "0.0135 kWh) stopped its training" in report_md(out)
    latest = tmp_path / "out" / "checkpoint-15"
    saved = json.loads((latest / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["EnergyCallback"]["attributes"]["energy_state"]["budget"]["stopped"] is True

    again, _, totals_again, said_again = hf_train(tmp_path, Budget(kwh=0.1, on_exceed="stop"), resume=str(latest), **args)
    assert again.state.global_step == steps_in_epoch and said_again == []
    assert totals_again[0] > totals[-1] and totals_again == sorted(totals_again)
    spent = 0.015 + 0.001 * (steps_in_epoch - 15)
    assert totals_again[-1] == pytest.approx(spent)
    records = check_totals(out, run_id, totals_again[-1])
    assert [(r.attempt, r.samples) for r in records if r.phase == "train"] == [
        (0, 15 * samples_per_step), (1, (steps_in_epoch - 15) * samples_per_step)]
    budget = summary_of(out)["budget"]
    assert (budget["stopped"], budget["reason"], budget["used"]["kwh"]) == (False, None, pytest.approx(spent))


@pytest.mark.parametrize("held, log_every, stop_step, trained, reached", [
    ({"min_epochs": 3}, 1, 12, [32, 32, 32], REACHED),  # the step stop in epoch 1 waits for epoch 2's end
    ({"min_steps": 10}, 1, 10, [32, 32, 16], REACHED),  # ... or for step 10
    ({"min_epochs": 3}, 0, 12, [32, 32, 32], REACHED.replace("0.006", "0.008")),  # an epoch's end stop alike
], ids=["min_epochs", "min_steps", "min_epochs_at_epoch_end"])
def test_lightning_step_stop_held_off_by_min_epochs_or_min_steps_says_so(tmp_path, held, log_every, stop_step, trained, reached):
    """Lightning refuses to stop before its min_epochs / min_steps: the budget's "stopping training"
    at 0.006 kWh was then the only word while training went on (to 0.012 kWh with min_epochs=3)."""
    fit, run_id, steps, epochs, said = lightning_fit(tmp_path, Budget(kwh=LIMIT_KWH, on_exceed="stop"), version="a", log_every=log_every, **held)
    assert fit.global_step == stop_step
    (name, value), = held.items()
    assert said[-2:] == [f"greencallbacks: {reached}; stopping training",
                        f"greencallbacks: the budget stops training, but Lightning trains on until its {name}={value} "
                        "is met; the energy spent meanwhile counts in the run's totals"]
    records = check_totals(tmp_path / "energy", run_id, float(epochs[-1]["energy_kwh_total"]))
    assert [r.samples for r in records if r.phase == "train"] == trained
    assert summary_of(tmp_path / "energy")["energy_kwh"] == pytest.approx(stop_step * 0.001)
    assert [float(r["budget_stop"]) for r in epochs] == [0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------- Keras
def test_keras_step_stop_with_backup_and_restore_then_same_and_raised_resumes(tmp_path):
    """TensorBoard logging every batch, BackupAndRestore and ModelCheckpoint every 3: the stop after
    batch 7 (three of epoch 1's four, 96 samples); the same budget restored from the backup (epoch 1)
    stops after one batch, silent; a raised one trains epochs 1-3 on top: 0.007 + 0.001 + 0.012."""
    pytest.importorskip("keras", reason="Keras is not installed")
    pytest.importorskip("tensorboard")
    import os
    import subprocess
    import sys

    runner = Path(__file__).with_name("keras_step_stop_runner.py")
    done = subprocess.run([sys.executable, str(runner), "torch", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    stop, same, raised = results["stop"], results["same"], results["raised"]
    assert stop["ran"] == [[0, b] for b in range(4)] + [[1, b] for b in range(3)]
    assert stop["warnings"][-1] == f"greencallbacks: {REACHED}; stopping training"
    assert stop["budget_stop"] == [0.0, 1.0] and stop["energy_kwh_total"] == pytest.approx([0.004, 0.007])
    assert (same["ran"], same["warnings"], same["budget_stop"]) == ([[1, 0]], [], [1.0])
    assert raised["ran"] == [[e, b] for e in (1, 2, 3) for b in range(4)] and raised["warnings"] == []
    assert raised["energy_kwh_total"] == pytest.approx([0.012, 0.016, 0.020])
    logged = [v for fit in results.values() for v in fit["tensorboard_batches"]]  # across the resumes too
    assert logged == sorted(logged) and logged[-1] == pytest.approx(0.019, rel=1e-6)  # float32, before the last batch
    out = tmp_path / "energy"
    summary = summary_of(out)
    records = check_totals(out, summary["run_id"], raised["energy_kwh_total"][-1])
    assert [(r.attempt, r.epoch, r.samples) for r in records if r.phase == "train"] == [
        (0, 0, 100), (0, 1, 96), (1, 1, 32), (2, 1, 100), (2, 2, 100), (2, 3, 100)]
    assert summary["attempts"] == 3 and summary["energy_kwh"] == pytest.approx(0.020)
    assert (summary["budget"]["stopped"], summary["budget"]["reason"]) == (False, None)
