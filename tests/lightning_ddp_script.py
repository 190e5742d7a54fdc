"""Two CPU ranks under Lightning's DDP (gloo), each dumping what it logged (run by test_lightning_ddp).

Usage: python lightning_ddp_script.py OUT_DIR [STRATEGY]. With ``ddp`` (the default) Lightning's
subprocess launcher starts rank 1 by running this script again with LOCAL_RANK set; with
``ddp_spawn`` it pickles the Trainer, callbacks and model into two new processes, and only this
process's rank-0 dump is written (by the parent).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

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


def main(out_dir: Path, strategy: str) -> None:
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
