"""Two CPU ranks under Lightning's DDP (gloo) with real CSV and TensorBoard loggers (run by
test_distributed_logged_totals).

Usage: python distributed_logged_script.py OUT_DIR MODE [CKPT]. Lightning's ``ddp`` launcher starts
rank 1 by running this script again with LOCAL_RANK set. The fit: 37 training samples in batches of
4 (a DistributedSampler pads them to 19 a rank: 5 batches), 13 validation samples, 3 epochs,
log_every_n_steps=2, a model logging its loss at every step (Lightning's own step points),
checkpoints every 3 steps (``inside/step=N.ckpt``) and at every epoch's end (``ends/epoch=N.ckpt``).

``crash``: rank 1 alone raises in epoch 1's fourth training step (after the checkpoint at step 6);
rank 0 fails in the gradients' all-reduce that follows; ``kill``: rank 1 kills itself there
(SIGKILL) instead. ``resume``: the fit resumed from CKPT in a
new launch with new loggers. The loggers write under ``<MODE>`` in ``csv/`` and ``tb/``; each rank
writes ``<MODE>.rank<r>.json``: the samples it ran per epoch and its run id.
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


def main(out: Path, mode: str, ckpt: str | None) -> None:
    import lightning.pytorch as L
    from lightning.fabric.strategies.launchers import subprocess_script
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.data import DataLoader

    from distributed_everyday_script import dataset
    from greencallbacks.sensors.base import Kind
    from lightning_models import flavour, step_logging, trainer_kwargs
    from tests.fakes.scripted import ScriptedSensor

    _, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    StepLogging = step_logging(TinyModel)

    class Model(StepLogging):
        def training_step(self, batch, batch_idx):
            if mode in ("crash", "kill") and self.global_rank == 1 and self.current_epoch == 1 and batch_idx == 3:
                if mode == "kill":  # killed outright (the kernel's OOM killer, say): no handler runs
                    (out / f"{mode}.rank1.json").write_text(json.dumps({"train": ran.train, "world_size": 2}))
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("rank 1 alone fails in training")
            return super().training_step(batch, batch_idx)

    class Ran(L.Callback):
        def __init__(self):
            self.train: dict[int, int] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.train[trainer.current_epoch] = self.train.get(trainer.current_epoch, 0) + len(batch[0])

    # Lightning's launcher polls its ranks every 5 s and kills them all once one has failed: the
    # ranks here end by themselves, rank 0 writing up its part and finalizing its loggers.
    subprocess_script._ChildProcessObserver.__init__.__defaults__ = (120,)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    ran = Ran()
    device = ScriptedSensor(f"device{rank}", time.monotonic, power_w=POWER_W, kind=Kind.GPU)
    energy = EnergyCallback(output_dir=out / "energy", intensity=300.0, sensors=[device])
    savers = [ModelCheckpoint(dirpath=out / "inside", every_n_train_steps=3, save_top_k=-1, filename="{step}"),
              ModelCheckpoint(dirpath=out / "ends", save_top_k=-1, filename="{epoch}")]
    loggers = [CSVLogger(out / "csv", name=mode), TensorBoardLogger(out / "tb", name=mode)]
    trainer = L.Trainer(max_epochs=3, strategy="ddp", logger=loggers, callbacks=[energy, ran, *savers],
                        **trainer_kwargs(devices=2, log_every_n_steps=2, enable_checkpointing=True,
                                         num_sanity_val_steps=0))
    try:
        trainer.fit(Model(), DataLoader(dataset(37, 0), batch_size=4), DataLoader(dataset(13, 1), batch_size=4),
                    ckpt_path=ckpt)
    finally:
        dump = {"train": ran.train, "run_id": energy.tracker.run_id, "world_size": trainer.world_size,
                "log_dirs": [logger.log_dir for logger in loggers]}
        (out / f"{mode}.rank{trainer.global_rank}.json").write_text(json.dumps(dump))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
