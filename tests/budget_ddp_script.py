"""Two CPU ranks under Lightning's DDP (gloo) with a stopping budget (run by test_budget_everyday).

Usage: python budget_ddp_script.py OUT_DIR LIMIT_KWH. Lightning's ``ddp`` launcher starts rank 1 by
running this script again with LOCAL_RANK set. Each rank's scripted device costs 1 Wh a training
batch (5 a rank an epoch) and 5 Wh in the gap after each epoch: 0.02 kWh an epoch on the two, 0.2
kWh in 10 epochs. Validation mid-epoch and at its end, step logs every step (on rank 0 only, as
Lightning's loggers write). Each rank writes ``rank<r>.json``: the epoch it ended at and whether
its budget stopped it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests.fakes


def main(out: Path, limit_kwh: float) -> None:
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    from distributed_everyday_script import dataset
    from greencallbacks import Budget
    from greencallbacks.sensors.base import Kind
    from lightning_models import flavour, trainer_kwargs
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    _, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    clock = FakeClock()

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)

        def on_train_epoch_end(self, trainer, pl_module):  # after EnergyCallback's: in the gap
            clock.advance(5.0)

    energy = EnergyCallback(output_dir=out / "energy", intensity=100.0, budget=Budget(kwh=limit_kwh, on_exceed="stop"),
                            sensors=[ScriptedSensor(f"device{rank}", clock, power_w=3600.0, kind=Kind.GPU)])
    trainer = L.Trainer(max_epochs=10, strategy="ddp", logger=L.loggers.CSVLogger(out, name="csv"),
                        callbacks=[energy, Tick()],
                        **trainer_kwargs(devices=2, log_every_n_steps=1, num_sanity_val_steps=0, val_check_interval=0.5))
    trainer.fit(TinyModel(), DataLoader(dataset(37, 0), batch_size=4), DataLoader(dataset(13, 1), batch_size=4))
    dump = {"epoch": trainer.current_epoch, "should_stop": bool(trainer.should_stop)}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(dump))


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]))
