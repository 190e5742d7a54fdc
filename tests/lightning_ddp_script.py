"""Two CPU ranks under Lightning's DDP (gloo), each dumping what it logged (run by test_lightning_ddp).

Usage: python lightning_ddp_script.py OUT_DIR [STRATEGY]. With ``ddp`` (the default) Lightning's
subprocess launcher starts rank 1 by running this script again with LOCAL_RANK set; with
``ddp_spawn`` it pickles the Trainer, callbacks and model into two new processes, and only this
process's rank-0 dump is written (by the parent). ``killed``: every rank kills itself outright
(SIGKILL, as a preemption) inside epoch 0, after a checkpoint saved there; ``resumed``: the fit
resumed from that checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests.fakes

import lightning.pytorch as L  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, Logger  # noqa: E402

from lightning_models import flavour, loaders, trainer_kwargs  # noqa: E402


class EveryRankLogger(Logger):
    """Keeps what Lightning logs on this rank (Lightning's own loggers write on rank 0 only)."""

    def __init__(self):
        super().__init__()
        self.logged: list[dict] = []

    @property
    def name(self):
        return "every-rank"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append({"step": step, **{k: float(v) for k, v in metrics.items()}})


_, EnergyCallback, TinyModel = flavour("lightning.pytorch")


class SpawnableModel(TinyModel):
    """TinyModel under a name a spawned process can import: ddp_spawn pickles the model."""


def killed_or_resumed(out_dir: Path, mode: str) -> None:
    import signal
    import time

    from lightning.pytorch.callbacks import ModelCheckpoint

    from greencallbacks.sensors.base import Kind
    from tests.fakes.scripted import ScriptedSensor

    class KilledAtBatch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 3:  # before this batch's checkpoint (checkpoint callbacks run last): the last is at batch 1
                os.kill(os.getpid(), signal.SIGKILL)

    # A device of its own on each rank, as a GPU each: the host's CPU and RAM are billed by rank 0 alone.
    device = ScriptedSensor(f"device{os.environ.get('LOCAL_RANK', '0')}", time.monotonic, power_w=100.0, kind=Kind.GPU)
    callback = EnergyCallback(output_dir=out_dir / "energy", country="DE", sensors=[device])
    checkpoints = ModelCheckpoint(dirpath=out_dir / "checkpoints", every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(max_epochs=1, strategy="ddp", logger=False,
                        callbacks=[callback, checkpoints] + ([KilledAtBatch()] if mode == "killed" else []),
                        **trainer_kwargs(devices=2, enable_checkpointing=True))
    last = sorted((out_dir / "checkpoints").glob("*.ckpt")) if mode == "resumed" else []
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(128, 4, generator=torch.Generator().manual_seed(0)), torch.randn(128, 1))
    trainer.fit(SpawnableModel(), DataLoader(data, batch_size=8), loaders()[1], ckpt_path=str(last[-1]) if last else None)


def main(out_dir: Path, strategy: str) -> None:
    if strategy in ("killed", "resumed"):
        return killed_or_resumed(out_dir, strategy)
    callback = EnergyCallback(output_dir=out_dir / "energy", country="DE")
    every_rank = EveryRankLogger()
    trainer = L.Trainer(
        max_epochs=2,
        strategy=strategy,
        logger=[CSVLogger(out_dir, name="csv"), every_rank],
        callbacks=[callback],
        **trainer_kwargs(devices=2),
    )
    trainer.fit(SpawnableModel(), *loaders())
    rank = trainer.global_rank
    dump = {
        "rank": rank,
        "world_size": trainer.world_size,
        "logged": every_rank.logged,
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "records": [r.to_dict() for r in callback.tracker.records],
        "pid": os.getpid(),
    }
    if strategy == "ddp":
        # Lightning's advice for testing after DDP: one device, on rank 0 alone. The process group
        # is still up; a collective in the callback's setup waited there for rank 1 (at the
        # barrier below) until gloo's 30-minute timeout.
        if rank == 0:
            tester = L.Trainer(callbacks=[EnergyCallback(output_dir=out_dir / "test", country="DE")],
                               **trainer_kwargs(devices=1))
            tester.test(SpawnableModel(), loaders()[1], verbose=False)
            dump["test_on_rank_0"] = float(tester.callback_metrics["test_energy_kwh"])
        import torch.distributed

        torch.distributed.barrier()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(dump))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ddp")
