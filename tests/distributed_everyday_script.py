"""Two CPU ranks under Lightning's DDP (gloo), one of them failing (run by test_distributed_everyday).

Usage: python distributed_everyday_script.py OUT_DIR MODE. Lightning's ``ddp`` launcher starts
rank 1 by running this script again with LOCAL_RANK set. Each rank writes ``<mode>.rank<r>.json``:
the samples it really ran (per training epoch, per validation and test run, counted by a callback
of its own), what it logged, and the run id. The fit: 37 training samples in batches of 4 (the
DistributedSampler pads them to 19 a rank), 13 validation samples, val_check_interval=0.5, 2
epochs.

``crash-val``: rank 1 alone raises in epoch 1's mid-epoch validation, after checkpoints at every
step; ``resumed-val``: the fit resumed from the last of them in a new launch. ``crash-test``: the fit
with accumulate_grad_batches=2, then ``trainer.test`` on 11 samples, in which rank 1 alone raises.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests.fakes

POWER_W = 100.0  # each rank's scripted device


def device(rank: int):
    from greencallbacks.sensors.base import Kind
    from tests.fakes.scripted import ScriptedSensor

    return ScriptedSensor(f"device{rank}", time.monotonic, power_w=POWER_W, kind=Kind.GPU)


def dataset(n: int, seed: int):
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator))


def main(out: Path, mode: str) -> None:
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import Logger
    from torch.utils.data import DataLoader

    from lightning_models import flavour, trainer_kwargs

    _, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Ran(L.Callback):
        """The samples this rank ran: per training epoch, and per validation or test run in order."""

        def __init__(self):
            self.train: dict[int, int] = {}
            self.validation: list[int] = []
            self.test: list[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.train[trainer.current_epoch] = self.train.get(trainer.current_epoch, 0) + len(batch[0])

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.validation.append(0)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                self.validation[-1] += len(batch[0])

        def on_test_start(self, trainer, pl_module):
            self.test.append(0)

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.test[-1] += len(batch[0])

    class EveryRankLogger(Logger):
        def __init__(self):
            super().__init__()
            self.logged: list[dict] = []

        name = "every-rank"
        version = 0

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.logged.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    class Model(TinyModel):
        def validation_step(self, batch, batch_idx):
            if mode == "crash-val" and self.global_rank == 1 and self.current_epoch == 1 and batch_idx == 1:
                raise RuntimeError("rank 1 alone fails in validation")
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx):
            if mode == "crash-test" and self.global_rank == 1 and batch_idx == 1:
                raise RuntimeError("rank 1 alone fails in test")
            return super().test_step(batch, batch_idx)

    if mode != "resumed-val":
        # Lightning's launcher polls its ranks every 5 s and kills them all once one has failed
        # (SIGKILL): a poll landing in the milliseconds between rank 1's exit and rank 0's own
        # write-up of its part would make the outcome a matter of timing. Rank 0 ends by itself.
        from lightning.fabric.strategies.launchers import subprocess_script

        subprocess_script._ChildProcessObserver.__init__.__defaults__ = (120,)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    ran, logger = Ran(), EveryRankLogger()
    energy = EnergyCallback(output_dir=out / "energy", country="DE", sensors=[device(rank)])
    testing = mode == "crash-test"
    checkpoints = [] if testing else [ModelCheckpoint(dirpath=out / "checkpoints", every_n_train_steps=1, save_top_k=-1)]
    trainer = L.Trainer(max_epochs=2, strategy="ddp", logger=logger, callbacks=[energy, ran, *checkpoints],
                        **trainer_kwargs(devices=2, log_every_n_steps=1, enable_checkpointing=not testing,
                                         accumulate_grad_batches=2 if testing else 1,
                                         val_check_interval=0.5, num_sanity_val_steps=0))
    ckpt = None
    if mode == "resumed-val":
        ckpt = str(max((out / "checkpoints").glob("*.ckpt"), key=lambda p: int(p.stem.split("step=")[1])))
    try:
        trainer.fit(Model(), DataLoader(dataset(37, 0), batch_size=4), DataLoader(dataset(13, 1), batch_size=4),
                    ckpt_path=ckpt)
        if testing:
            trainer.test(Model(), DataLoader(dataset(11, 2), batch_size=4), verbose=False)
    finally:
        dump = {"train": ran.train, "validation": ran.validation, "test": ran.test, "logged": logger.logged,
                "run_id": energy.tracker.run_id}
        (out / f"{mode}.rank{trainer.global_rank}.json").write_text(json.dumps(dump))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
