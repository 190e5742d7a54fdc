"""A budget and a carbon-aware pause together, through stops, crashes and resumes (real Lightning
and HF Trainer on CPU).

The scripted H100 of ``test_budget_frameworks`` on a fake clock: each training batch costs 1 Wh
(4 batches an epoch: 0.004 kWh), and a pause costs its seconds at the same 3600 W (1 kWh per
1000 s), billed to the gap before the epoch it delays. The pause's clock and sleep are that fake
clock, so no test waits. The grid (100 gCO2eq/kWh) is always above the pause's threshold: each
pause waits in steps of 600 s until its delay budget of 1500 s is spent.

After each attempt: the records sum to the summary and to the last total the framework's logger
received, step values never go down (across a resume too), the logged ``carbon_pause_s`` is the
run's delay spent, and the pause's energy is in the totals once.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch")

from greencallbacks import Budget
from greencallbacks.carbon_aware import CarbonAwarePause
from tests import flow_invariants
from tests.fakes.scripted import FakeClock
from tests.test_budget_frameworks import energy_warnings, read_csv, sensor

from lightning_models import flavour, loaders, trainer_kwargs

pytestmark = pytest.mark.slow

EPOCH_KWH = 0.004
MAX_DELAY_S, CHECK_EVERY_S = 1500.0, 600.0
PAUSE_KWH_PER_S = 3600.0 / 3.6e6  # the sensor's 3600 W


class TimeLimit(Exception):
    """What a job's time-limit signal handler raises: it lands where the training thread waits."""


def pause_gate(clock: FakeClock, interrupt_at: int | None = None, interrupt: type[BaseException] = TimeLimit):
    """A pause on ``clock``; the ``interrupt_at``-th sleep is cut short half way by ``interrupt``."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == interrupt_at:
            clock.advance(seconds / 2)
            raise interrupt("job time limit reached")
        clock.advance(seconds)

    gate = CarbonAwarePause(50.0, MAX_DELAY_S, check_every_s=CHECK_EVERY_S, sleep=sleep, clock=clock)
    return gate, sleeps


def check_totals(out: Path, run_id: str, logged_kwh: float) -> list:
    """Records = summary = last logged total; returns the records."""
    records = flow_invariants.check_run(run_id, [out])
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    flow_invariants.logged_total_matches(records, logged_kwh, rel=1e-9)
    return records


def pauses_of(records) -> list[tuple[int, float, bool]]:
    """(attempt, paused_s, partial) of each gap that paused, its energy checked to be the pause's."""
    paused = [r for r in records if r.paused_s]
    for r in paused:
        assert r.phase == "other" and r.samples == 0
        assert r.energy_kwh == pytest.approx(r.paused_s * PAUSE_KWH_PER_S, rel=1e-9)
    return [(r.attempt, r.paused_s, r.partial) for r in paused]


def report_md(out: Path) -> str:
    from greencallbacks.cli import main

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["report", str(out)]) == 0
    return text.getvalue()


# ------------------------------------------------------------------------------------ Lightning
def lightning_fit(tmp_path, budget, *, max_epochs, version, ckpt=None, fail_at=None, interrupt_at=None, pause=True):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    clock = FakeClock()
    gate, sleeps = pause_gate(clock, interrupt_at) if pause else (None, [])

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0,
                              budget=budget, carbon_aware=gate)
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1,
                                             save_last=True, save_on_train_epoch_end=True)
    logger = L.loggers.CSVLogger(tmp_path, name="csv", version=version)
    trainer = L.Trainer(max_epochs=max_epochs, logger=logger, callbacks=[callback, Tick(), checkpoint],
                        **trainer_kwargs(enable_checkpointing=True, log_every_n_steps=2))
    raised = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(TinyModel(fail_at=fail_at), *loaders(), ckpt_path=tmp_path / "ckpt" / ckpt if ckpt else None)
        except Exception as error:  # noqa: BLE001 - the flows crash on purpose
            raised = error
    rows = read_csv(Path(logger.log_dir) / "metrics.csv")
    epochs = [r for r in rows if r.get("budget_stop")]
    steps = [float(r["energy_kwh_total"]) for r in rows if r.get("energy_kwh_total") and not r.get("budget_stop")]
    return callback, epochs, steps, energy_warnings(caught), raised, sleeps


def column(rows, name) -> list[float]:
    return [float(r[name]) for r in rows]


def test_lightning_budget_stop_then_a_resume_with_a_raised_budget_continues_the_run_totals(tmp_path):
    out = tmp_path / "energy"
    callback, epochs, steps, said, _, _ = lightning_fit(tmp_path, Budget(kwh=0.0095, on_exceed="stop"), max_epochs=6,
                                                        version="first", pause=False)
    assert column(epochs, "budget_stop") == [0.0, 0.0, 1.0] and said[-1].endswith("stopping training")
    run_id = callback.tracker.run_id
    check_totals(out, run_id, float(epochs[-1]["energy_kwh_total"]))
    assert "budget (0.0095 kWh) stopped its training" in report_md(out)

    # Raised to go on: judged afresh against the whole run's totals, from the stopping epoch's checkpoint.
    _, resumed, steps_after, said_again, _, _ = lightning_fit(tmp_path, Budget(kwh=0.05, on_exceed="stop"), max_epochs=6,
                                                               version="resumed", ckpt="last.ckpt", pause=False)
    assert said_again == []  # 0.024 kWh at most: below 80 % of the new limit, and nothing of the old one said again
    assert column(resumed, "epoch") == [3, 4, 5] and column(resumed, "budget_stop") == [0.0] * 3
    assert column(resumed, "budget_used_fraction") == pytest.approx([e * EPOCH_KWH / 0.05 for e in (4, 5, 6)], rel=1e-9)
    assert column(resumed, "energy_kwh_total") == pytest.approx([e * EPOCH_KWH for e in (4, 5, 6)], rel=1e-9)
    everything = steps + steps_after
    assert everything == sorted(everything) and steps_after[0] >= column(epochs, "energy_kwh_total")[-1]
    records = check_totals(out, run_id, float(resumed[-1]["energy_kwh_total"]))
    assert [(r.attempt, r.epoch) for r in records if r.phase == "train"] == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["attempts"] == 2 and summary["energy_kwh"] == pytest.approx(6 * EPOCH_KWH, rel=1e-9)
    budget = summary["budget"]
    assert (budget["stopped"], budget["reason"], budget["warnings"]) == (False, None, [])
    assert budget["used"]["kwh"] == pytest.approx(6 * EPOCH_KWH, rel=1e-9)
    assert "budget" not in report_md(out).split("## Provenance")[1].split("## Statement")[0]  # the run trained to its end


@pytest.mark.parametrize("crash", ["in_the_epoch_after_the_pause", "inside_the_pause"])
def test_lightning_a_pause_cut_short_by_a_crash_is_not_paused_again_on_resume(tmp_path, crash):
    out = tmp_path / "energy"
    inside = crash == "inside_the_pause"
    budget = Budget(kwh=5.0, on_exceed="stop")
    callback, first, _, _, raised, sleeps = lightning_fit(
        tmp_path, budget, max_epochs=4, version="first",
        fail_at=None if inside else (2, 1), interrupt_at=2 if inside else None)
    assert type(raised).__name__ == ("TimeLimit" if inside else "Boom")
    paused_first = 900.0 if inside else MAX_DELAY_S  # 600 s, then half of the next 600 s step
    assert sleeps == ([600.0, 600.0] if inside else [600.0, 600.0, 300.0])
    flow_invariants.meter_threads()
    records = check_totals(out, callback.tracker.run_id, float(first[-1]["energy_kwh_total"]))
    assert pauses_of(records) == [(0, paused_first, inside)]
    assert column(first, "carbon_pause_s") == ([0.0] if inside else [0.0, MAX_DELAY_S])

    # From the checkpoint of epoch 0, written before the pause: the delay spent is the records'.
    _, resumed, _, said, raised, sleeps = lightning_fit(tmp_path, budget, max_epochs=4, version="resumed", ckpt="epoch=0.ckpt")
    assert raised is None and said == []
    assert sleeps == ([600.0] if inside else [])  # what was left of the 1500 s, never a second full delay
    assert column(resumed, "carbon_pause_s") == [paused_first, MAX_DELAY_S, MAX_DELAY_S]
    records = check_totals(out, callback.tracker.run_id, float(resumed[-1]["energy_kwh_total"]))
    assert pauses_of(records) == [(0, paused_first, inside)] + ([(1, 600.0, False)] if inside else [])
    summary = json.loads((out / "energy-summary.json").read_text())
    trained_kwh = sum(r.energy_kwh for r in records if r.phase == "train")
    assert summary["energy_kwh"] == pytest.approx(trained_kwh + MAX_DELAY_S * PAUSE_KWH_PER_S, rel=1e-9)
    assert summary["budget"]["used"]["kwh"] == pytest.approx(summary["energy_kwh"], rel=1e-9)


def test_lightning_a_pause_that_spends_the_budget_stops_the_run_at_the_next_step_log(tmp_path):
    out = tmp_path / "energy"
    callback, epochs, steps, said, _, sleeps = lightning_fit(tmp_path, Budget(kwh=1.0, on_exceed="stop"), max_epochs=4,
                                                             version="first")
    assert sleeps == [600.0, 600.0, 300.0]  # one pause, before epoch 1; none after the stop
    assert column(epochs, "budget_stop") == [0.0, 1.0] and column(epochs, "carbon_pause_s") == [0.0, MAX_DELAY_S]
    # Reached at the first step log after the pause (two batches into epoch 1), and stopped there.
    assert column(epochs, "budget_used_fraction") == pytest.approx([EPOCH_KWH, EPOCH_KWH + 0.002 + 1.5], rel=1e-9)
    assert len(said) == 1 and said[0].endswith("reached the budget of 1 kWh; stopping training")
    assert steps and steps == sorted(steps)
    records = check_totals(out, callback.tracker.run_id, float(epochs[-1]["energy_kwh_total"]))
    assert pauses_of(records) == [(0, MAX_DELAY_S, False)]
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["budget"]["stopped"] and summary["budget"]["used"]["kwh"] == pytest.approx(summary["energy_kwh"], rel=1e-9)
    text = report_md(out)
    assert "budget (1 kWh) stopped its training" in text and "carbon-aware pause" in text


# ---------------------------------------------------------------------------------- HF Trainer
def hf_train(tmp_path, budget, *, epochs, resume=None, interrupt_at=None):
    from transformers import Trainer, TrainerCallback

    from greencallbacks import watch
    from greencallbacks.hf import EnergyCallback
    from hf_tiny import TokenDataset, tiny_model, training_args

    clock = FakeClock()
    gate, sleeps = pause_gate(clock, interrupt_at, interrupt=KeyboardInterrupt)

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.advance(1.0)

    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[sensor(clock)], intensity=100.0,
                              budget=budget, carbon_aware=gate)
    args = training_args(tmp_path / "out", num_train_epochs=epochs, save_strategy="epoch", eval_strategy="no",
                         logging_strategy="steps", logging_steps=2)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(30), callbacks=[callback, Tick()])
    interrupted = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.train(resume_from_checkpoint=resume)
        except KeyboardInterrupt:
            interrupted = True
    watch.settle()  # the Trainer has no exception hook: the watch writes the crash up
    logged = trainer.state.log_history
    epochs_logged = [e for e in logged if "budget_stop" in e]
    steps = [e["energy_kwh_total"] for e in logged if "energy_kwh_total" in e and "budget_stop" not in e]
    return callback, epochs_logged, steps, energy_warnings(caught), interrupted, sleeps


def test_hf_ctrl_c_inside_a_pause_then_a_resume_spends_only_the_delay_left(tmp_path):
    out = tmp_path / "energy"
    budget = Budget(kwh=5.0, on_exceed="stop")
    callback, first, steps, _, interrupted, sleeps = hf_train(tmp_path, budget, epochs=4, interrupt_at=2)
    assert interrupted and sleeps == [600.0, 600.0]
    records = check_totals(out, callback.tracker.run_id, first[-1]["energy_kwh_total"])
    assert pauses_of(records) == [(0, 900.0, True)]
    assert [e["carbon_pause_s"] for e in first] == [0.0]

    _, resumed, steps_after, said, interrupted, sleeps = hf_train(tmp_path, budget, epochs=4, resume=tmp_path / "out" / "checkpoint-4")
    assert not interrupted and said == [] and sleeps == [600.0]
    resumed = [e for e in resumed if e["step"] > 4]  # the log history goes on from the checkpoint's
    assert [e["carbon_pause_s"] for e in resumed] == [900.0, MAX_DELAY_S, MAX_DELAY_S]
    assert [e["budget_used_fraction"] for e in resumed] == pytest.approx(
        [(EPOCH_KWH * e + p * PAUSE_KWH_PER_S) / 5.0 for e, p in ((2, 900.0), (3, MAX_DELAY_S), (4, MAX_DELAY_S))], rel=1e-9)
    assert steps_after == sorted(steps_after) and steps_after[:len(steps)] == steps
    records = check_totals(out, callback.tracker.run_id, resumed[-1]["energy_kwh_total"])
    assert pauses_of(records) == [(0, 900.0, True), (1, 600.0, False)]
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(4 * EPOCH_KWH + MAX_DELAY_S * PAUSE_KWH_PER_S, rel=1e-9)


def test_hf_a_pause_that_spends_the_budget_stops_the_run_at_the_next_step_log(tmp_path):
    out = tmp_path / "energy"
    callback, epochs, steps, said, _, sleeps = hf_train(tmp_path, Budget(kwh=1.0, on_exceed="stop"), epochs=4)
    assert sleeps == [600.0, 600.0, 300.0]  # none after the stop
    assert [e["budget_stop"] for e in epochs] == [0.0, 1.0] and [e["carbon_pause_s"] for e in epochs] == [0.0, MAX_DELAY_S]
    # Reached at the first step log after the pause (two steps into epoch 1), and stopped there.
    assert [e["budget_used_fraction"] for e in epochs] == pytest.approx([EPOCH_KWH, EPOCH_KWH + 0.002 + 1.5], rel=1e-9)
    assert len(said) == 1 and said[0].endswith("reached the budget of 1 kWh; stopping training")
    assert steps == sorted(steps)
    records = check_totals(out, callback.tracker.run_id, epochs[-1]["energy_kwh_total"])
    assert pauses_of(records) == [(0, MAX_DELAY_S, False)]
    assert [r.epoch for r in records if r.phase == "train"] == [0, 1]
