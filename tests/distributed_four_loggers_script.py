"""Two CPU ranks under Lightning's DDP (gloo) logging to W&B (offline), MLflow (file store),
TensorBoard and CSV at once (run by test_distributed_four_loggers).

Usage: python distributed_four_loggers_script.py OUT_DIR MODE [CKPT]. Lightning's ``ddp`` launcher
starts rank 1 by running this script again with LOCAL_RANK set. The fit: 37 training samples in
batches of 4 (a DistributedSampler pads them to 19 a rank: 5 batches a epoch), 13 validation
samples, 4 epochs, log_every_n_steps=2, a model logging its loss at every step, checkpoints every
3 steps with ``last.ckpt`` (``inside/``) and at every epoch's end (``ends/``).

MODE ``<how>-<who>``: the fit of 4 epochs fails in epoch 2's fourth training step (after the
checkpoint of step 12), ``how`` ``raise`` (an exception) or ``kill`` (SIGKILL), ``who`` ``rank0``
or ``rank1`` (the other rank then fails in the all-reduce that follows) or ``both``. ``resume``:
the fit resumed from CKPT in a new launch with new loggers, to 4 epochs, then ``validate`` on the
same Trainer; ``fit2``: a fit of 2 epochs that ends well (continued by a failing one from its last
checkpoint). Each rank writes ``<MODE>.rank<r>.json``: the samples it ran per epoch and in each
validation, the run id and rank 0's MLflow run (before it is killed, too).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests.fakes

POWER_W = 100.0  # each rank's scripted device
FAIL_AT = (2, 3)  # (epoch, batch)


def main(out: Path, mode: str, ckpt: str | None) -> None:
    import lightning.pytorch as L
    from lightning.fabric.strategies.launchers import subprocess_script
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
    from torch.utils.data import DataLoader

    from distributed_everyday_script import dataset
    from greencallbacks.sensors.base import Kind
    from lightning_models import flavour, step_logging, trainer_kwargs
    from tests.fakes.scripted import ScriptedSensor

    _, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    StepLogging = step_logging(TinyModel)
    how, _, who = mode.partition("-")

    def dump(trainer=None):
        info = {"train": ran.train, "validation": ran.validation, "run_id": energy.tracker.run_id, "world_size": 2,
                "mlflow_run": loggers[2].run_id if rank == 0 else None}
        (out / f"{mode}.rank{rank}.json").write_text(json.dumps(info))

    class Model(StepLogging):
        def training_step(self, batch, batch_idx):
            failing = who == "both" or who == f"rank{self.global_rank}"
            if how in ("raise", "kill") and failing and (self.current_epoch, batch_idx) == FAIL_AT:
                if how == "kill":  # killed outright (the kernel's OOM killer, a preemption): no handler runs
                    dump()
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"rank {self.global_rank} fails in training")
            return super().training_step(batch, batch_idx)

    class Ran(L.Callback):
        def __init__(self):
            self.train: dict[int, int] = {}
            self.validation: list[int] = []  # samples of each validation, in order

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.train[trainer.current_epoch] = self.train.get(trainer.current_epoch, 0) + len(batch[0])

        def on_validation_epoch_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.validation.append(0)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self.validation[-1] += len(batch[0])

    # Lightning's launcher polls its ranks every 5 s and kills them all once one has failed: the
    # ranks here end by themselves, rank 0 writing up its part and finalizing its loggers.
    subprocess_script._ChildProcessObserver.__init__.__defaults__ = (120,)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    ran = Ran()
    device = ScriptedSensor(f"device{rank}", time.monotonic, power_w=POWER_W, kind=Kind.GPU)
    energy = EnergyCallback(output_dir=out / "energy", intensity=300.0, sensors=[device])
    savers = [ModelCheckpoint(dirpath=out / "inside", every_n_train_steps=3, save_top_k=-1, filename="{step}",
                              save_last=True),
              ModelCheckpoint(dirpath=out / "ends", save_top_k=-1, filename="{epoch}")]
    loggers = [CSVLogger(out / "csv", name=mode), TensorBoardLogger(out / "tb", name=mode),
               MLFlowLogger(experiment_name=mode, tracking_uri=f"file:{out / 'mlruns'}"),
               WandbLogger(project="energy", name=mode, save_dir=str(out / f"wandb-{mode}"), offline=True)]
    trainer = L.Trainer(max_epochs=2 if mode == "fit2" else 4, strategy="ddp", logger=loggers, callbacks=[energy, ran, *savers],
                        **trainer_kwargs(devices=2, log_every_n_steps=2, enable_checkpointing=True,
                                         num_sanity_val_steps=0))
    model, val = Model(), DataLoader(dataset(13, 1), batch_size=4)
    try:
        trainer.fit(model, DataLoader(dataset(37, 0), batch_size=4), val, ckpt_path=ckpt)
        trainer.validate(model, val)
    finally:
        dump()
        if rank == 0:
            import wandb

            wandb.finish()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
