"""Budgets judged on the prediction at moments other than an epoch's end, through real Lightning (CPU).

The scripted H100 of ``test_budget_frameworks`` on a fake clock: each training batch costs 1 Wh
and the work after each epoch's training (a checkpoint, say) 4 Wh, billed to the gap after it.
Ten epochs then use exactly 0.08 kWh, and every prediction made at an epoch's end says so. A
budget of 0.083 kWh with ``on_exceed="stop"`` must let the run finish.

Checked elsewhere the prediction is at the training ends only; here it is also at a step log
after a mid-epoch validation (the gap before it is in the total by then) and as a resumed fit
starts (the last epoch's gap too). Counting that gap a second time, as the mean tail still to
come, predicted 0.084 kWh, and the budget stopped both runs half way.
"""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("torch")

from greencallbacks import Budget
from tests import flow_invariants
from tests.fakes.scripted import FakeClock
from tests.test_budget_frameworks import energy_warnings, sensor

from lightning_models import flavour, loaders, trainer_kwargs

pytestmark = pytest.mark.slow

LIMIT_KWH = 0.083
RUN_KWH = 0.08  # 10 epochs of 4 batches (1 Wh each) and a 4 Wh gap


def fit(tmp_path, *, max_epochs, ckpt_path=None, **kwargs):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    clock = FakeClock()

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)

        def on_train_epoch_end(self, trainer, pl_module):  # after EnergyCallback's: in the gap
            clock.advance(4.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0,
                              budget=Budget(kwh=LIMIT_KWH, on_exceed="stop"))
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(max_epochs=max_epochs, logger=L.loggers.CSVLogger(tmp_path, name="csv"),
                        callbacks=[callback, Tick(), checkpoint],
                        **trainer_kwargs(enable_checkpointing=True, **kwargs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    flow_invariants.check_run(callback.tracker.run_id, [tmp_path / "energy"])
    return trainer, summary, energy_warnings(caught)


def test_a_step_log_after_a_mid_epoch_validation_does_not_count_the_gap_twice(tmp_path):
    trainer, summary, said = fit(tmp_path, max_epochs=10, log_every_n_steps=1, val_check_interval=0.5)
    assert not any("predicted" in message for message in said), said
    assert trainer.current_epoch == 10 and summary["budget"]["stopped"] is False
    assert summary["energy_kwh"] == pytest.approx(RUN_KWH, rel=1e-9)


def test_a_resumed_fit_does_not_count_the_last_gap_twice_as_it_starts(tmp_path):
    fit(tmp_path, max_epochs=5)  # 0.04 kWh, the gap after epoch 4 included
    trainer, summary, said = fit(tmp_path, max_epochs=10, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert not any("predicted" in message for message in said), said
    assert trainer.current_epoch == 10 and summary["budget"]["stopped"] is False
    assert summary["energy_kwh"] == pytest.approx(RUN_KWH, rel=1e-9) and summary["attempts"] == 2


def ddp_fit(tmp_path, limit_kwh: str) -> tuple[list[dict], dict]:
    """``budget_ddp_script.py`` on two gloo ranks: what each rank ended at, and the run's summary."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("lightning", reason="lightning is not installed: the DDP tests need it")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    script = Path(__file__).with_name("budget_ddp_script.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path), limit_kwh], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, json.loads((tmp_path / "energy" / "energy-summary.json").read_text())


def test_every_ddp_rank_goes_on_alike_when_only_rank_0_judges_the_step_logs(tmp_path):
    """Only rank 0 logs steps, so only it judged the budget there: a stop decided on the inflated
    prediction stopped rank 0 after epoch 3 and left rank 1 waiting in a collective for ever."""
    ranks, summary = ddp_fit(tmp_path, "0.205")  # 0.2 kWh in 10 epochs; 0.21 predicted with the gap counted twice
    assert ranks == [{"epoch": 10, "should_stop": False}] * 2
    assert summary["energy_kwh"] == pytest.approx(0.2, rel=1e-9) and summary["budget"]["stopped"] is False


def test_ddp_step_logs_sum_every_rank_and_a_budget_reached_there_stops_every_rank_at_that_step(tmp_path):
    """Each rank's device costs 1 Wh a batch: a step log's total goes up 2 Wh a step, both ranks'
    open parts (rank 0's alone went up 1 Wh a step, half the run's, until the epoch's end). At
    step 8, four batches into epoch 1, it reaches 0.025 kWh and both ranks stop there."""
    import csv

    from greencallbacks.records import read_records

    ranks, summary = ddp_fit(tmp_path, "0.025")
    assert ranks == [{"epoch": 2, "should_stop": True}] * 2  # epoch 1 ended early on both, none after it
    assert summary["budget"]["stopped"] and summary["budget"]["reason"] == "energy total 0.026 kWh reached the budget of 0.025 kWh"
    rows = list(csv.DictReader(open(next((tmp_path / "csv").glob("version_*/metrics.csv")), newline="")))
    steps = [(int(r["step"]), float(r["energy_kwh_total"])) for r in rows if r["energy_kwh_total"] and not r["energy_kwh"]]
    # Epoch 0's five steps (and the 10 Wh gap after them, both ranks' 5), then epoch 1's four.
    assert steps == [(s, pytest.approx(kwh, abs=1e-12)) for s, kwh in
                     [(0, 0.0), (1, 0.002), (2, 0.004), (3, 0.006), (4, 0.008), (5, 0.020), (6, 0.022), (7, 0.024), (8, 0.026)]]
    train = [(r.epoch, r.samples, r.energy_kwh) for r in read_records(tmp_path / "energy") if r.phase == "train"]
    assert train == [(0, 38, pytest.approx(0.010, rel=1e-9)), (1, 32, pytest.approx(0.008, rel=1e-9))]  # 4 batches of 4, a rank
