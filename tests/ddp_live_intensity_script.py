"""Two CPU ranks under Lightning's DDP (gloo), each pricing its part at a live Electricity Maps
source (run by test_ddp_live_intensity_labels.py, which serves the API on the loopback address).

Usage: python ddp_live_intensity_script.py OUT_DIR BASE_URL. Lightning's ``ddp`` launcher starts
rank 1 by running this script again with LOCAL_RANK set. Each rank's scripted device costs 1 Wh a
training batch. One bucket holds the whole run (``bucket_s``), so each rank asks the API once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests.fakes


def main(out: Path, base_url: str) -> None:
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    from distributed_everyday_script import dataset
    from greencallbacks.carbon.live import ElectricityMapsSource
    from greencallbacks.sensors.base import Kind
    from lightning_models import flavour, trainer_kwargs
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    _, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    clock = FakeClock()

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)

    source = ElectricityMapsSource("DE", token="test-token", base_url=base_url, bucket_s=1e9, timeout_s=10.0)
    energy = EnergyCallback(output_dir=out / "energy", series=source,
                            sensors=[ScriptedSensor(f"device{rank}", clock, power_w=3600.0, kind=Kind.GPU)])
    trainer = L.Trainer(max_epochs=2, strategy="ddp", logger=False, callbacks=[energy, Tick()],
                        **trainer_kwargs(devices=2, num_sanity_val_steps=0))
    trainer.fit(TinyModel(), DataLoader(dataset(16, 0), batch_size=4), DataLoader(dataset(8, 1), batch_size=4))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
