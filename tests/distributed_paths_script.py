"""CPU ranks under Lightning's DDP (gloo) on the paths test_distributed_paths_more checks.

Usage: python distributed_paths_script.py OUT_DIR MODE DEVICES. Lightning's ``ddp`` launcher
starts the other ranks by running this script again with LOCAL_RANK set; ``ddp_spawn`` pickles the
Trainer, callbacks and model into new processes, and ``ddp_fork`` forks them (one launcher: the
failure paths are the same, and forking takes a second, not ten). Each rank writes ``<mode>.rank<r>.json``: the
samples it really ran (by phase and epoch, counted by a callback of its own), its tracker's
records and run id.

The fit: 37 training samples in batches of 4 (a DistributedSampler pads them to 19 a rank), 13
validation samples, 2 epochs, a checkpoint at every step and last.ckpt. ``crash``: the last rank
alone raises in epoch 1's third training step; ``kill``: it kills itself there (SIGKILL) instead;
``kill-first``: rank 0 (the launcher's own process) alone kills itself there;
``spawn-crash``: under ``ddp_fork``, every rank raises there. ``resume``: the fit resumed from
last.ckpt on DEVICES processes, then ``validate`` and ``test`` on the same Trainer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests.fakes

import lightning.pytorch as L  # noqa: E402

from lightning_models import flavour, trainer_kwargs  # noqa: E402

POWER_W = 100.0  # each rank's scripted device
_, EnergyCallback, TinyModel = flavour("lightning.pytorch")


def dataset(n: int, seed: int):
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator))


class Ran(L.Callback):
    """The samples this rank ran, by phase (training by epoch, validation by the Trainer's call)."""

    def __init__(self, out: Path, mode: str):
        self.samples: Counter = Counter()
        self.out, self.mode = out, mode

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples[f"train {trainer.current_epoch}"] += len(batch[0])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.samples[f"validation {trainer.state.fn.value}"] += len(batch[0])

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.samples["test"] += len(batch[0])

    def write_up(self, trainer, energy) -> None:
        dump = {"samples": dict(self.samples), "run_id": energy.tracker.run_id,
                "records": [r.to_dict() for r in energy.tracker.records], "world_size": trainer.world_size}
        (self.out / f"{self.mode}.rank{trainer.global_rank}.json").write_text(json.dumps(dump))


class Model(TinyModel):
    """Fails (``mode``) in epoch 1's third training step; a module-level class: ddp_spawn pickles it."""

    def __init__(self, mode: str = ""):
        super().__init__()
        self.mode = mode

    def training_step(self, batch, batch_idx):
        failing = self.global_rank == (0 if self.mode == "kill-first" else self.trainer.world_size - 1) or self.mode == "spawn-crash"
        if self.mode in ("crash", "kill", "kill-first", "spawn-crash") and failing and self.current_epoch == 1 and batch_idx == 2:
            if self.mode != "crash":  # what this rank ran: its process ends without a `finally` of ours
                ran = next(cb for cb in self.trainer.callbacks if isinstance(cb, Ran))
                ran.write_up(self.trainer, next(cb for cb in self.trainer.callbacks if isinstance(cb, EnergyCallback)))
            if self.mode.startswith("kill"):  # killed outright (the kernel's OOM killer, say): no handler runs
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rank {self.global_rank} fails in training")
        return super().training_step(batch, batch_idx)


def main(out: Path, mode: str, devices: int) -> None:
    from lightning.fabric.strategies.launchers import subprocess_script
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from greencallbacks.sensors.base import Kind
    from tests.fakes.scripted import ScriptedSensor

    # Lightning's launcher polls its ranks every 5 s and kills them all once one has failed
    # (SIGKILL): the ranks here end by themselves, each writing up its part.
    subprocess_script._ChildProcessObserver.__init__.__defaults__ = (120,)
    spawn = mode.startswith("spawn")
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    ran = Ran(out, mode)
    # A device of its own on each rank, as a GPU each (under ddp_fork, the default sensors).
    sensors = None if spawn else [ScriptedSensor(f"device{rank}", time.monotonic, power_w=POWER_W, kind=Kind.GPU)]
    energy = EnergyCallback(output_dir=out / "energy", country="DE", sensors=sensors)
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", every_n_train_steps=1, save_top_k=-1, save_last=True)
    callbacks = [energy, ran] + ([] if spawn else [checkpoints])
    trainer = L.Trainer(max_epochs=2, strategy="ddp_fork" if spawn else "ddp", logger=False, callbacks=callbacks,
                        **trainer_kwargs(devices=devices, enable_checkpointing=not spawn, num_sanity_val_steps=0))
    ckpt = str(out / "checkpoints" / "last.ckpt") if mode == "resume" else None
    train, val = DataLoader(dataset(37, 0), batch_size=4), DataLoader(dataset(13, 1), batch_size=4)
    try:
        trainer.fit(Model(mode), train, val, ckpt_path=ckpt)
        if mode == "resume":
            trainer.validate(Model(), val, verbose=False)
            trainer.test(Model(), DataLoader(dataset(11, 2), batch_size=4), verbose=False)
    finally:
        if not spawn:  # (the spawned ranks' own callbacks are copies, gone with their processes)
            ran.write_up(trainer, energy)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
