"""Step values (``energy_kwh_total``, ``co2eq_g_total`` at Lightning's ``log_every_n_steps`` and HF's
``logging_steps`` / ``eval_steps``) against the exact joules a fake clock spent, over random flows.

``test_lightning_logged_totals`` and ``test_hf_logged_totals`` read the loggers back on the real
clock, where a double count of a few batches would pass for time. Here a scripted sensor on a fake
clock that the flow advances (1 Wh a training batch or HF optimizer step, 0.5 Wh an evaluation
batch, 0.25 Wh in the gap before each epoch, 0.125 Wh a checkpoint; restores cost nothing) makes
every value known: each step value, as Lightning's CSV logger or HF's ``on_log`` received it, is
the run's energy at that batch's end exactly, every earlier attempt of the run included (a crashed
one's energy after its checkpoint too, once); each epoch's total is the run's at that epoch's end;
and the records add up to it. The flows: a new Trainer, ``fit`` / ``train`` again on the same one (a new run from 0), a
resume from any checkpoint in a new Trainer or the same one (a run's own, or an older run's: it goes
on in that run), each maybe crashed (an error or Ctrl-C) at a drawn step, with validation inside
epochs (``val_check_interval``, across epochs too; ``eval_steps``), accumulation, ``max_steps``
(raised on a resume), partial ``limit_train_batches``, a budget stopping at a step log, and
evaluations between.

More seeds: GC_STEP_EXACT_SEEDS=50 (each framework).
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greencallbacks import Budget  # noqa: E402
from tests import flow_invariants  # noqa: E402
from tests.fakes.scripted import FakeClock, ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow

WH = 1e-3  # kWh: one fake second at 3600 W
INTENSITY = 300.0
SEEDS = int(os.environ.get("GC_STEP_EXACT_SEEDS", "0"))


def never_back(values: list[float], context: str) -> None:
    # Exactly: an epoch's total is never an ulp below the step value before it (test_logged_totals_never_back).
    assert all(later >= earlier for earlier, later in zip(values, values[1:])), (context, values)


def drawn_budget(rng: random.Random) -> dict:
    """Half the flows stop for a budget at a step log (or, resumed over it, before an epoch)."""
    return {"budget": Budget(kwh=rng.uniform(0.005, 0.04), on_exceed="stop")} if rng.random() < 0.5 else {}


class Spent:
    """The run's exact energy: what its earlier attempts spent (``base``) plus this attempt's."""

    def __init__(self) -> None:
        self.base = self.kwh = 0.0

    @property
    def run(self) -> float:
        return self.base + self.kwh


# ------------------------------------------------------------------------------------ Lightning
def note_run(callback, checkpoint, checkpoint_run: dict, by_run: dict, spent_kwh: float, context: str) -> str:
    """After a call: no meter thread left (a call that raised is written up by the watch thread),
    a resume went on in its checkpoint's run and anything else began a new one; note its energy."""
    assert not flow_invariants.meter_threads(), context
    run = callback.tracker.run_id
    if checkpoint is not None:
        assert run == checkpoint_run[checkpoint], context
    else:
        assert run not in by_run, context
    by_run[run] = spent_kwh
    return run


def lightning_flow(seed: int, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_models import Boom, flavour, trainer_kwargs
    from tests.test_budget_frameworks import H100

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    rng = random.Random(seed)
    out, clock, spent = tmp_path / "energy", FakeClock(), Spent()
    batches = rng.choice([6, 8])
    settings = dict(max_epochs=rng.choice([2, 3]), max_steps=rng.choice([-1, -1, rng.randint(2, 8)]),
                    accumulate_grad_batches=rng.choice([1, 2]), limit_train_batches=rng.choice([1.0, 0.5, 5]),
                    limit_val_batches=2, log_every_n_steps=rng.choice([1, 2, 3]), num_sanity_val_steps=0)
    inside = rng.choice([None, 2, 3, 0.5, "across"])
    if inside == "across":  # validation by batches counted over epochs
        settings.update(val_check_interval=rng.choice([5, 7]), check_val_every_n_epoch=None)
    elif inside is not None:
        settings["val_check_interval"] = inside
    save_every, save_on_epoch_end = rng.choice([1, 2, 3]), rng.choice([True, False])
    budget = drawn_budget(rng)
    steps = [f"seed {seed}: {batches} batches, {settings}, checkpoints every {save_every} steps {budget}"]

    def data(samples):
        generator = torch.Generator().manual_seed(samples)
        return DataLoader(TensorDataset(torch.randn(samples, 4, generator=generator),
                                        torch.randn(samples, 1, generator=generator)), batch_size=4)

    at_batch_end, at_epoch_end = [], []

    class Tick(L.Callback):  # before EnergyCallback: a batch's step value includes the batch
        def on_train_epoch_start(self, trainer, pl_module):  # the gap before the epoch, closed as it begins
            clock.advance(0.25)
            spent.kwh += WH / 4

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            clock.advance(0.125)
            spent.kwh += WH / 8

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)
            spent.kwh += WH

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                clock.advance(0.5)
                spent.kwh += WH / 2

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            clock.advance(0.5)
            spent.kwh += WH / 2

    class Noted(L.Callback):  # after it: the run's energy at the step Lightning's loggers use
        trained = False  # a batch in this epoch (a resumed one too, which 2.5+ begins without its hook)

        def on_fit_start(self, trainer, pl_module):
            # Not the epoch a crashed fit on this Trainer left open: Lightning 2.2 (not 2.5+) begins a
            # resume from a checkpoint saved at its epoch's last batch by ending that epoch, with no batch.
            self.trained = False

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            at_batch_end.append((trainer.fit_loop.epoch_loop._batches_that_stepped, spent.run))
            self.trained = True

        def on_train_epoch_end(self, trainer, pl_module):
            # An epoch that ran no batch has no record, nor values (Lightning 2.6 runs such epochs
            # in some resumes on a Trainer that fitted before, with or without this callback).
            if self.trained:
                at_epoch_end.append(spent.run)
            self.trained = False

    class StepLogging(TinyModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("step_loss", loss, on_step=True, on_epoch=False)  # Lightning's own logging steps
            return loss

    by_run, checkpoint_run, seen = {}, {}, set()
    trainer = callback = logger = None
    rows_read = 0
    for number in range(4):
        checkpoints = sorted((tmp_path / "ckpt").glob("*.ckpt"))
        op = rng.choice(["new", "again", "resume", "resume on the same Trainer"])
        if op.startswith("resume") and not checkpoints:
            op = "new"
        if op in ("again", "resume on the same Trainer") and trainer is None:
            op = "new"
        checkpoint = rng.choice(checkpoints) if op.startswith("resume") else None
        fail_at = (rng.randint(0, settings["max_epochs"] + 1), rng.randrange(batches)) if rng.random() < 0.5 else None
        if op in ("new", "resume"):
            callback = EnergyCallback(output_dir=out, sensors=[H100("gpu0", clock, power_w=3600.0)],
                                      intensity=INTENSITY, **budget)
            logger = L.loggers.CSVLogger(tmp_path, name="csv", version=f"v{number}")
            saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename=f"a{number}" + "-{epoch}-{step}",
                                                save_top_k=-1, every_n_train_steps=save_every,
                                                save_on_train_epoch_end=save_on_epoch_end)
            trainer = L.Trainer(logger=logger, callbacks=[Tick(), callback, Noted(), saver],
                                **trainer_kwargs(enable_checkpointing=True, **settings))
            rows_read = 0
        else:  # on the same Trainer, with an epoch (and steps) more
            trainer.fit_loop.max_epochs += 1
            if trainer.fit_loop.epoch_loop.max_steps > 0:
                trainer.fit_loop.epoch_loop.max_steps += 3
        steps.append(f"{op} {checkpoint and checkpoint.name} crash at {fail_at}")
        context = " / ".join(steps)
        spent.base, spent.kwh = (by_run[checkpoint_run[checkpoint]] if checkpoint else 0.0), 0.0
        at_batch_end.clear()
        at_epoch_end.clear()
        try:
            trainer.fit(StepLogging(fail_at=fail_at), data(4 * batches), data(16), ckpt_path=checkpoint)
        except Boom:
            pass
        except Exception as error:  # Lightning refuses a checkpoint whose epochs are all done
            if "max_epochs" not in str(error):
                raise
            steps.append("refused")
        if rng.random() < 0.3:
            trainer.test(TinyModel(), data(8), verbose=False)
            steps.append("test")
        run = note_run(callback, checkpoint, checkpoint_run, by_run, spent.run, context)
        for path in sorted((tmp_path / "ckpt").glob("*.ckpt")):
            if path not in seen:
                seen.add(path)
                checkpoint_run[path] = run

        path = Path(logger.log_dir) / "metrics.csv"
        rows = list(csv.DictReader(path.open())) if path.exists() else []
        rows, rows_read = rows[rows_read:], len(rows)  # this fit's (a fit on the same Trainer appends)
        step_values = [(int(r["step"]), float(r["energy_kwh_total"])) for r in rows
                       if r.get("energy_kwh_total") and not r.get("energy_kwh")]
        epoch_values = [(int(r["step"]), float(r["energy_kwh_total"])) for r in rows if r.get("energy_kwh")]
        assert [s for s, _ in step_values] == [int(r["step"]) for r in rows if r.get("step_loss")], context
        assert [s for s, _ in epoch_values] == [int(r["step"]) for r in rows if r.get("train_loss")], context
        noted = {}
        for step, kwh in at_batch_end:  # under accumulation several batch ends share a step
            noted.setdefault(step, []).append(kwh)
        for step, value in step_values:
            spent_then = noted.get(step, [])
            assert any(value == pytest.approx(kwh, abs=1e-12) for kwh in spent_then), (
                context, f"step {step} logged {value / WH:.4f} Wh, the run had spent {[k / WH for k in spent_then]}")
        assert [v for _, v in epoch_values] == pytest.approx(at_epoch_end, abs=1e-12), context
        totals = [float(r["energy_kwh_total"]) for r in rows if r.get("energy_kwh_total")]
        never_back(totals, context)
        grams = [float(r["co2eq_g_total"]) for r in rows if r.get("co2eq_g_total")]
        assert grams == pytest.approx([t * INTENSITY for t in totals], rel=1e-9), context
        records = flow_invariants.check_run(run, [out], context=context)
        assert sum(r.energy_kwh for r in records) == pytest.approx(by_run[run], abs=1e-12), context


@pytest.mark.parametrize("seed", range(SEEDS or 12))
def test_lightning_step_values_are_the_runs_exact_energy(tmp_path, seed):
    lightning_flow(seed, tmp_path)


# ------------------------------------------------------------------------------------------- HF
def hf_flow(seed: int, tmp_path: Path) -> None:
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from greencallbacks.sensors.base import Kind
    from tests.hf_tiny import TokenDataset, tiny_model, training_args

    pue = 1.5
    rng = random.Random(seed)
    budget = drawn_budget(rng)
    out, clock, spent = tmp_path / "out", FakeClock(), Spent()
    settings = dict(num_train_epochs=rng.choice([2, 3]), gradient_accumulation_steps=rng.choice([1, 2, 3]),
                    per_device_train_batch_size=rng.choice([4, 8]), logging_strategy="steps",
                    logging_steps=rng.choice([1, 2, 3]), eval_strategy=rng.choice(["steps", "epoch", "no"]),
                    eval_steps=rng.choice([1, 2, 3]), save_strategy="steps", save_steps=rng.choice([1, 2, 3]))
    if rng.random() < 0.3:
        settings["max_steps"] = rng.randint(2, 9)
    steps = [f"seed {seed}: {settings}"]
    logged = []

    class Tick(TrainerCallback):  # before EnergyCallback (HF's own flow callback goes first)
        def on_epoch_begin(self, args, state, control, **kwargs):  # the gap before the epoch, closed as it begins
            clock.advance(0.25)
            spent.kwh += WH / 4

        def on_save(self, args, state, control, **kwargs):
            clock.advance(0.125)
            spent.kwh += WH / 8

        def on_step_end(self, args, state, control, **kwargs):
            clock.advance(1.0)
            spent.kwh += WH

        def on_prediction_step(self, args, state, control, **kwargs):
            clock.advance(0.5)
            spent.kwh += WH / 2

    class Noted(TrainerCallback):  # each entry HF's reporters get, with the run's energy then
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append((dict(logs), spent.run))

    class StopAt(TrainerCallback):
        def __init__(self, step: int, error: type[BaseException]) -> None:
            self.step, self.error = step, error

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                raise self.error(f"stopped at step {self.step}")

    by_run, checkpoint_run = {}, {}
    trainer = callback = None
    for _ in range(4):
        checkpoints = {p: json.loads((p / "trainer_state.json").read_text())["global_step"]
                       for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()}
        op = rng.choice(["new", "again", "resume", "resume on the same Trainer"])
        if op.startswith("resume") and not checkpoints:
            op = "new"
        if op in ("again", "resume on the same Trainer") and trainer is None:
            op = "new"
        checkpoint = rng.choice(sorted(checkpoints)) if op.startswith("resume") else None
        if op in ("new", "resume"):
            callback = EnergyCallback(intensity=INTENSITY, pue=pue, **budget,
                                      sensors=[ScriptedSensor("gpu", clock, power_w=3600.0, kind=Kind.GPU)])
            trainer = Trainer(model=tiny_model(), args=training_args(out, **settings), train_dataset=TokenDataset(30),
                              eval_dataset=TokenDataset(10, seed=1), callbacks=[Tick(), callback, Noted()])
        if checkpoint is not None and "max_steps" in settings and rng.random() < 0.6:
            settings["max_steps"] = checkpoints[checkpoint] + rng.randint(1, 6)
        trainer.args.max_steps = settings.get("max_steps", -1)
        if op in ("again", "resume on the same Trainer") and rng.random() < 0.5:
            trainer.args.num_train_epochs += 1
        error = rng.choice([None, None, RuntimeError, KeyboardInterrupt])
        stop = StopAt(rng.randint(1, 10), error) if error else None
        if stop:
            trainer.add_callback(stop)
        steps.append(f"{op} {checkpoint and checkpoint.name} max_steps={trainer.args.max_steps} "
                     f"{error and error.__name__} at {stop and stop.step}")
        context = " / ".join(steps)
        spent.base, spent.kwh = (by_run[checkpoint_run[checkpoint]] if checkpoint else 0.0), 0.0
        logged.clear()
        written = {p: p.stat().st_mtime_ns for p in out.glob("checkpoint-*")}
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except (RuntimeError, KeyboardInterrupt):
            pass
        if stop:
            trainer.remove_callback(stop)
        if rng.random() < 0.3:
            trainer.evaluate()
            steps.append("evaluate")
        run = note_run(callback, checkpoint, checkpoint_run, by_run, spent.run, context)
        for path in out.glob("checkpoint-*"):
            if written.get(path) != path.stat().st_mtime_ns:  # (a checkpoint-N of another run written over)
                checkpoint_run[path] = run
        totals = []
        for entry, kwh in logged:
            if "energy_kwh_total" in entry:
                assert entry["energy_kwh_total"] == pytest.approx(kwh * pue, abs=1e-12), (
                    context, entry, f"the run had spent {kwh / WH:.4f} Wh (IT)")
                assert entry["co2eq_g_total"] == pytest.approx(entry["energy_kwh_total"] * INTENSITY, rel=1e-9), context
                totals.append(entry["energy_kwh_total"])
        never_back(totals, context)
        records = flow_invariants.check_run(run, [out], context=context)
        assert sum(r.energy_kwh for r in records) == pytest.approx(by_run[run] * pue, abs=1e-12), context


@pytest.mark.parametrize("seed", range(SEEDS or 3))
def test_hf_step_values_are_the_runs_exact_energy(tmp_path, seed):
    pytest.importorskip("transformers")
    hf_flow(seed, tmp_path)
