"""Randomized user flows through the real Lightning Trainer, checking the ledger after every step.

Each seed draws a sequence of what people do: a fit (new run) or a resume from any checkpoint
saved so far (at epoch ends, validation ends, and inside epochs), each maybe crashing (inside a
training batch, inside validation, inside a checkpoint write, between epochs), with validation
every epoch or every other epoch, once or twice per epoch; then validate / test / predict. Also,
drawn from a Random of their own (the seeds' earlier draws stay as they were): a fit from
``ckpt_path="last"``, a second ``fit`` on the same Trainer with a raised ``max_epochs`` (a new
run), validate / test of another run's checkpoint in a fresh Trainer with the same callback. A
scripted constant-power sensor makes every record's energy follow its duration exactly. After
every step: records sum to the summary and to the last logged total, seq and attempts are
consistent, samples are what Lightning ran (counted by a second callback), no thread is left.
Run more seeds with GC_FLOW_SEEDS=20; a failure names its seed and step.
"""

from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greencallbacks import report
from flow_invariants import check_run, logged_total_matches, meter_threads
from lightning_models import VAL_SAMPLES, Boom, batches_run, flavour, last_logged_total, loaders, trainer_kwargs
from tests.fakes.scripted import ScriptedSensor

pytestmark = pytest.mark.slow
POWER_W = 50.0
SEEDS = range(int(os.environ.get("GC_FLOW_SEEDS", "4")))


def make_crash(L, where: str, epoch: int):
    class Crash(L.Callback):
        """Raises at one point of the fit: what a bug, an OOM or Ctrl-C would do."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if where == "train_batch" and trainer.current_epoch == epoch and batch_idx == 1:
                raise Boom(f"in a training batch of epoch {epoch}")

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if where == "validation" and trainer.current_epoch == epoch and not trainer.sanity_checking:
                raise Boom(f"in validation of epoch {epoch}")

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            if where == "checkpoint" and trainer.current_epoch == epoch:
                raise Boom(f"in the checkpoint write of epoch {epoch}")

        def on_train_epoch_start(self, trainer, pl_module):
            if where == "between_epochs" and trainer.current_epoch == epoch:
                raise Boom(f"between epochs, before epoch {epoch}")

    return Crash()


@pytest.mark.parametrize("seed", SEEDS)
def test_random_lightning_flows_keep_the_ledger(tmp_path, seed):
    rng = random.Random(seed)
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    sensor = ScriptedSensor("gpu", time.monotonic, POWER_W)
    checkpoints: list[Path] = []
    runs: dict[str, list[Path]] = {}  # run id -> directories its fits logged to
    dirs: list[Path] = []
    callback = EnergyCallback(sensors=[sensor], intensity=300.0)  # one object reused, as in a notebook
    trainer = model = None
    steps = []
    seen: set[tuple[str, int, int]] = set()  # (run, attempt, seq) of the records earlier fits wrote
    checkpoint_run: dict[Path, str] = {}  # checkpoint -> the run that wrote it
    dir_run: dict[Path, str] = {}  # checkpoint directory -> the run that wrote into it last
    ckpt_dir = None

    def check_fit(run_id, log_dir, ran, before, *, resumed, crashed, context):
        """The ledger after one fit: invariants, samples exact, attempts, logged total, cut short."""
        records = check_run(run_id, dirs, power_w=POWER_W, context=context)
        # Samples exact: what this fit's records counted, per phase and epoch, is what Lightning
        # ran, counted apart. (How many batches a resumed epoch or validation runs differs between
        # Lightning releases: 2.2 continues a resumed validation where it stopped.)
        new = [r for r in records if (r.run_id, r.attempt, r.seq) not in seen]
        seen.update((r.run_id, r.attempt, r.seq) for r in records)
        counted = collections.Counter()
        for r in new:
            if r.phase in ("train", "validation"):
                counted[r.phase, r.epoch] += r.samples
        assert +counted == +(ran.samples - before), context
        if resumed:
            assert max(r.attempt for r in records) >= 1, "a resume is a new attempt " + context
        logged = last_logged_total(log_dir)
        this_attempt = [r for r in records if r.attempt == max(x.attempt for x in records)]
        if logged is not None and any(r.phase == "train" and not r.partial for r in this_attempt):
            logged_total_matches(records, logged, rel=1e-5, context=context)  # through Lightning's float32
        if crashed:
            assert any(r.partial for r in records), context
            # The report takes the run for cut short (no repeat of a finished one), even when the
            # crash came between two epochs and every epoch record is complete.
            if any(r.phase == "train" for r in records):
                assert report.cut_short(report.configuration(records)), context

    for step in range(4):
        resume = bool(checkpoints) and rng.random() < 0.5
        ckpt_path = rng.choice(checkpoints) if resume else None
        max_epochs = rng.randint(2, 4)
        crash = rng.choice([None, None, "train_batch", "validation", "checkpoint", "between_epochs"])
        crash_epoch = rng.randrange(max_epochs)
        val_every = rng.choice([1, 2])
        val_interval = rng.choice([1.0, 0.5])
        if ckpt_path is not None:
            # Lightning refuses max_epochs below a checkpoint's epoch ("epoch=3.ckpt", "epoch=3-v1.ckpt"):
            # continue it by at least its own epoch, as a user would.
            max_epochs = max(max_epochs, int(ckpt_path.stem.split("=")[1].split("-")[0]) + 1)
        # Also checkpoints inside epochs (every 3 of 4 batches), which a resume continues mid-epoch.
        # Drawn apart so the seeds draw the same flows as before this was added.
        mid_epoch_checkpoints = random.Random(f"{seed}-{step}").random() < 0.5
        more = random.Random(f"{seed}-{step} more")  # the actions added later, likewise
        from_last, fit_again, evaluate_other = more.random() < 0.25, more.random() < 0.3, more.choice([None, "validate", "test"])
        last_ckpt = sorted(ckpt_dir.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)[-1:] if from_last and ckpt_dir else []
        if last_ckpt:  # fit(ckpt_path="last") in the last fit's checkpoint directory
            ckpt_path = "last"
            max_epochs = max(max_epochs, torch.load(last_ckpt[0], map_location="cpu", weights_only=False)["epoch"] + 1)
        steps.append(f"fit(max_epochs={max_epochs}, resume={ckpt_path and Path(ckpt_path).name}, crash={crash}@{crash_epoch}, "
                     f"check_val_every_n_epoch={val_every}, val_check_interval={val_interval}"
                     f"{', every_n_train_steps=3' if mid_epoch_checkpoints else ''})")
        context = f"seed {seed}, steps: " + "; ".join(steps)
        ckpt_dir = ckpt_dir if last_ckpt else tmp_path / f"ckpt{step}"
        saver = L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, filename="{epoch}",
                                            save_on_train_epoch_end=rng.random() < 0.5, save_last=True)
        extra = [make_crash(L, crash, crash_epoch)] if crash else []
        if mid_epoch_checkpoints:
            extra.append(L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_train_steps=3,
                                                     filename="{epoch}-{step}"))
        logger = L.loggers.CSVLogger(tmp_path / "logs", name="flow")
        ran = batches_run(L)  # after ours, before the crash: both see the same batches
        trainer = L.Trainer(
            max_epochs=max_epochs, logger=logger, callbacks=[callback, ran, saver, *extra],
            **trainer_kwargs(enable_checkpointing=True, check_val_every_n_epoch=val_every, val_check_interval=val_interval),
        )
        model = TinyModel()
        known = set(ckpt_dir.glob("*.ckpt"))
        try:
            trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
            crashed = False
        except Boom:
            crashed = True
        assert not meter_threads(), context
        run_id = callback.tracker.run_id
        if last_ckpt:
            assert run_id == dir_run[ckpt_dir], "fit(ckpt_path='last') continues the run that saved it " + context
        # The last-checkpoint files are left out of the draws: the seeds draw what they drew before save_last.
        written = sorted(p for p in set(ckpt_dir.glob("*.ckpt")) - known if not p.name.startswith("last"))
        checkpoints.extend(written)
        checkpoint_run.update((p, run_id) for p in written)
        dir_run[ckpt_dir] = run_id
        dirs.append(Path(logger.log_dir))
        runs.setdefault(run_id, []).append(Path(logger.log_dir))
        if ckpt_path is None:
            assert len(runs[run_id]) == 1, "a fit without ckpt_path is a new run " + context
        check_fit(run_id, Path(logger.log_dir), ran, collections.Counter(), resumed=ckpt_path is not None,
                  crashed=crashed, context=context)
        if fit_again and not crashed:
            # The same Trainer fitted again further (a notebook's next cell): a new run from where it stopped.
            trainer.fit_loop.max_epochs = trainer.current_epoch + more.randint(1, 2)
            steps[-1] += f", fit again to {trainer.fit_loop.max_epochs}"
            context = f"seed {seed}, steps: " + "; ".join(steps)
            before = ran.samples.copy()
            lasts = {p: p.stat().st_mtime for p in ckpt_dir.glob("last*.ckpt")}
            trainer.fit(model, *loaders())
            assert not meter_threads(), context
            assert callback.tracker.run_id not in runs, "a second fit on one Trainer is a new run " + context
            run_id = callback.tracker.run_id
            runs[run_id] = [Path(logger.log_dir)]
            # Its checkpoints are left out of the draws, which stay as they were; "last" is its own
            # only where it saved one (with no validation in its epoch, it may save none).
            if {p: p.stat().st_mtime for p in ckpt_dir.glob("last*.ckpt")} != lasts:
                dir_run[ckpt_dir] = run_id
            check_fit(run_id, Path(logger.log_dir), ran, before, resumed=False, crashed=False, context=context)
        others = [p for p in checkpoints if checkpoint_run[p] != callback.tracker.run_id]
        if evaluate_other and others:
            # Another run's checkpoint evaluated in a fresh Trainer with this callback: in that run.
            other = more.choice(others)
            steps[-1] += f", {evaluate_other}({other.parent.name}/{other.name})"
            context = f"seed {seed}, steps: " + "; ".join(steps)
            eval_logger = L.loggers.CSVLogger(tmp_path / "logs", name="evaluate")
            evaluator = L.Trainer(logger=eval_logger, callbacks=[callback], **trainer_kwargs())
            getattr(evaluator, evaluate_other)(TinyModel(), loaders()[1], ckpt_path=other, verbose=False)
            assert not meter_threads(), context
            dirs.append(Path(eval_logger.log_dir))
            assert callback.tracker.run_id == checkpoint_run[other], "the evaluation goes on in the checkpoint's run " + context
            records = check_run(checkpoint_run[other], dirs, power_w=POWER_W, context=context)
            phase = {"validate": "validation", "test": "test"}[evaluate_other]
            last = [r for r in records if r.phase == phase][-1]
            assert last.samples == VAL_SAMPLES and not last.partial, context
            seen.update((r.run_id, r.attempt, r.seq) for r in records)
    print(f"seed {seed}: " + "; ".join(steps))  # what the seed covered (pytest -s), for the curious
    # Inference after the last fit continues its run, and stays exact.
    trainer = L.Trainer(logger=False, callbacks=[callback], **trainer_kwargs())
    trainer.validate(model, loaders()[1], verbose=False)
    trainer.test(model, loaders()[1], verbose=False)
    trainer.predict(model, loaders()[1])
    assert not meter_threads()
    records = check_run(callback.tracker.run_id, dirs, power_w=POWER_W, context=f"seed {seed}, inference")
    for phase in ("validation", "test", "predict"):
        last = [r for r in records if r.phase == phase][-1]
        assert last.samples == VAL_SAMPLES and not last.partial, f"seed {seed}: {phase}"
