"""Randomized notebook flows of one EnergyCallback over several Trainers: fits (some crashing,
some saving inside epochs), resumes from any checkpoint, and validate / test / predict of any
checkpoint, this callback's runs' or those of a run measured elsewhere (another callback object,
as in another process). After every step: the ledger's invariants for every run touched (no seq
written twice), samples exact, and an evaluation of a checkpoint of a run this callback holds (a
Trainer's latest fit, or a run an earlier evaluation went on with) begins no attempt: each began
one before, for a run measured elsewhere. A run whose Trainer has fitted another since is held no
more (a finished fit keeps its records in memory): its next evaluation begins one attempt.
Run more seeds with GC_FLOW_SEEDS=40; a failure names its seed and steps.
"""

from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.ledger import read_run_records  # noqa: E402
from lightning_models import Boom, batches_run, flavour, loaders, state_probe, trainer_kwargs  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

pytestmark = pytest.mark.slow
POWER_W = 50.0
SEEDS = range(int(os.environ.get("GC_FLOW_SEEDS", "8")))


def energy_callback(EnergyCallback):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, POWER_W)], intensity=300.0)


def epoch_of(checkpoint: Path) -> int:
    return int(checkpoint.stem.split("=")[1].split("-")[0])  # "epoch=1" or "epoch=1-step=7"


def epochs_run(checkpoint: Path) -> int:
    """The epochs a checkpoint had run: the label of an evaluation of it (the Trainer's epoch after
    its fit). One saved at the end of an epoch's last batch (``every_n_train_steps``) has run that
    epoch, which Lightning's epoch count takes in only at the epoch's end."""
    loop = torch.load(checkpoint, weights_only=False)["loops"]["fit_loop"]
    epochs, batches = loop["epoch_progress"]["current"], loop["epoch_loop.batch_progress"]
    last_batch_ran = batches["is_last_batch"] and batches["current"]["processed"] == batches["current"]["ready"]
    return epochs["processed"] + int(last_batch_ran and epochs["started"] > epochs["processed"])


def last_attempt(run_id: str, dirs) -> int:
    return max((r.attempt for r in read_run_records(run_id, set(dirs))), default=-1)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_evaluations_of_any_checkpoint_keep_one_attempt_per_session(tmp_path, seed):
    rng = random.Random(seed)
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    elsewhere, probe = energy_callback(EnergyCallback), state_probe(L)  # the probe's state in every checkpoint
    other = L.Trainer(max_epochs=2, logger=L.loggers.CSVLogger(tmp_path, name="other"), callbacks=[
        elsewhere, probe, L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt-other", save_top_k=-1, filename="{epoch}")],
        **trainer_kwargs(enable_checkpointing=True))
    other.fit(TinyModel(), *loaders())
    checkpoints = [(path, elsewhere.tracker.run_id) for path in sorted((tmp_path / "ckpt-other").glob("*.ckpt"))]
    dirs = [Path(other.log_dir)]
    callback, ran = energy_callback(EnergyCallback), batches_run(L, evaluations=True)
    trainers, measured, steps, seen = [], set(), [], set()  # seen: (run, attempt, seq) of the records so far
    fitted, evaluated = {}, set()  # the run of each Trainer's latest fit; the runs evaluations went on with
    for run_id in {run_id for _, run_id in checkpoints}:
        seen.update((r.run_id, r.attempt, r.seq) for r in check_run(run_id, dirs, power_w=POWER_W))
    for step in range(8):
        if not trainers or rng.random() < 0.3:
            trainers.append(L.Trainer(max_epochs=1, logger=L.loggers.CSVLogger(tmp_path, name=f"t{len(trainers)}"),
                                      callbacks=[callback, ran, probe], **trainer_kwargs(enable_checkpointing=True)))
        which = rng.randrange(len(trainers))
        trainer = trainers[which]
        action = rng.choice(["fit", "fit", "resume", "validate", "validate", "test", "test", "predict"])
        checkpoint = rng.choice([*checkpoints, None]) if action != "fit" else None
        action = "fit" if action == "resume" and checkpoint is None else action
        steps.append(f"{action}(t{which}, {checkpoint and '/'.join(checkpoint[0].parts[-2:])})")
        held = {run: last_attempt(run, dirs) for run in {*fitted.values(), *evaluated}}
        ran.samples.clear()
        if action in ("fit", "resume"):
            trainer.fit_loop.max_epochs = max(rng.randint(2, 3), epoch_of(checkpoint[0]) + 2 if checkpoint else 0)
            fail = (rng.randrange(trainer.fit_loop.max_epochs), rng.randrange(4)) if rng.random() < 0.4 else None
            steps[-1] += f" fail={fail}" if fail else ""
            saved = tmp_path / f"ckpt-{step}"
            saver = L.callbacks.ModelCheckpoint(dirpath=saved, save_top_k=-1, filename="{epoch}-{step}",
                                                every_n_train_steps=rng.choice([0, 3]))
            trainer.callbacks.append(saver)
            try:
                trainer.fit(TinyModel(fail), *loaders(), ckpt_path=checkpoint and checkpoint[0])
            except Boom:
                pass
            trainer.callbacks.remove(saver)
            checkpoints += [(path, callback.tracker.run_id) for path in sorted(saved.glob("*.ckpt"))]
            fitted[which] = callback.tracker.run_id
            evaluated.discard(callback.tracker.run_id)  # its fit's session goes on with it now
        else:
            kwargs = {} if action == "predict" else {"verbose": False}
            getattr(trainer, action)(TinyModel(), loaders()[1], ckpt_path=checkpoint and checkpoint[0], **kwargs)
            if checkpoint is not None:  # labelled with the checkpoint's epochs, not the Trainer's
                ran.samples = collections.Counter({(phase, epochs_run(checkpoint[0])): n for (phase, _), n in ran.samples.items()})
        context = f"seed {seed}: " + "; ".join(steps)
        assert not meter_threads(), context
        dirs.append(Path(trainer.log_dir))
        run = callback.tracker.run_id
        if checkpoint is not None and action != "resume":
            assert run == checkpoint[1], context
            assert last_attempt(run, dirs) == held.get(run, last_attempt(run, dirs)), "an attempt more: " + context
            if run not in fitted.values():
                evaluated.add(run)
        measured.add(run)
        billed = collections.Counter()
        for run_id in measured | {elsewhere.tracker.run_id}:
            for r in check_run(run_id, dirs, power_w=POWER_W, context=context):
                if (r.run_id, r.attempt, r.seq) not in seen and r.phase != "other":
                    billed[r.phase, r.epoch] += r.samples
                seen.add((r.run_id, r.attempt, r.seq))
        assert +billed == +ran.samples, context
