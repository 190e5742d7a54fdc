"""A fit resumed from a checkpoint saved inside an epoch (``ModelCheckpoint(every_n_train_steps=6)``)
whose first batch is ``None``: a ``collate_fn`` that drops a bad batch (Lightning warns "yielded
None", runs no step and calls no ``on_train_batch_start``, only ``on_train_batch_end``), or a
``training_step`` that returns ``None`` for it (Lightning skips the optimizer step).

The resumed epoch begins at its first batch (Lightning 2.5+ call no ``on_train_epoch_start`` for it;
2.2-2.4 call it before any batch is left to tell whether one is). Until 2026-12-06 a dropped first
batch, which has no start hook, left the epoch to begin at the second batch's start: the loader's
work for that second batch (1 Wh here) went to ``other``, the epoch's record held 2 Wh where a
resumed epoch whose first batch is real holds the same work (3 Wh with its one step); with every
batch left dropped, the epoch had no record at all (nor its values logged).

A scripted sensor on a fake clock: 1 Wh for each batch the loader makes, 2 Wh for each step begun.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greencallbacks.records import read_records  # noqa: E402
from tests import flow_invariants  # noqa: E402
from tests.fakes.scripted import FakeClock  # noqa: E402

WH = 1e-3  # kWh: one fake second at 3600 W
BATCHES = 4  # an epoch's, of 8 samples each; the checkpoint is saved after epoch 1's second batch


def resumed_fit(tmp_path: Path, flavour_name: str, first: str) -> dict:
    """Epoch 0 and two batches of epoch 1, crashed at its fourth; resumed from the checkpoint at
    step 6 with its first batch ``first``: "real", "dropped" (the collate gives None), "all
    dropped" (every batch left too) or "skipped" (training_step returns None)."""
    from torch.utils.data import DataLoader, TensorDataset, default_collate

    from lightning_models import Boom, flavour, trainer_kwargs
    from tests.test_budget_frameworks import H100

    L, EnergyCallback, TinyModel = flavour(flavour_name)
    clock = FakeClock()
    made = {"resumed": False, "batches": 0}
    ran = {"steps": 0, "samples": 0}  # by the resumed fit (Lightning 2.2 runs one batch more than 2.6)

    def collate(samples):
        clock.advance(1.0)  # the loader's work
        made["batches"] += 1
        if made["resumed"] and (made["batches"] == 1 and first == "dropped" or first == "all dropped"):
            return None
        return default_collate(samples)

    class Skipping(TinyModel):
        def training_step(self, batch, batch_idx):
            if made["resumed"] and first == "skipped" and not self.skipped:
                self.skipped = True
                return None
            return super().training_step(batch, batch_idx)

    class Step(L.Callback):  # after EnergyCallback: a step's work is its epoch's
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.advance(2.0)
            ran["steps"] += made["resumed"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            ran["samples"] += made["resumed"] and batch is not None and len(batch[0])

    generator = torch.Generator().manual_seed(0)
    size = 8 * BATCHES
    data = TensorDataset(torch.randn(size, 4, generator=generator), torch.randn(size, 1, generator=generator))
    start = clock.now

    def fit(ckpt_path=None, fail_at=None):
        callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[H100("gpu0", clock, power_w=3600.0)],
                                  intensity=300.0, progress_bar=False)
        checkpoints = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
        trainer = L.Trainer(callbacks=[callback, Step(), checkpoints], logger=False,
                            **trainer_kwargs(max_epochs=2, enable_checkpointing=True))
        model = Skipping(fail_at=fail_at)
        model.skipped = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's "yielded None", its few-workers advice
            try:
                trainer.fit(model, DataLoader(data, batch_size=8, collate_fn=collate), ckpt_path=ckpt_path)
            except Boom:
                pass
        return callback

    first_fit = fit(fail_at=(1, 3))
    (checkpoint,) = (tmp_path / "ckpt").glob("*step=6.ckpt")
    made.update(resumed=True, batches=0)
    resumed = fit(ckpt_path=str(checkpoint))
    assert resumed.tracker.run_id == first_fit.tracker.run_id
    return {"records": read_records(tmp_path / "energy"), "run_id": resumed.tracker.run_id,
            "spent_kwh": (clock.now - start) * WH, "directory": tmp_path / "energy",
            "made": made["batches"], **ran}


@pytest.mark.parametrize("flavour_name", ["lightning.pytorch", "pytorch_lightning"])
@pytest.mark.parametrize("first", ["real", "dropped", "all dropped", "skipped"])
def test_a_resumed_epoch_whose_first_batch_is_none_begins_at_it(tmp_path, flavour_name, first):
    fit = resumed_fit(tmp_path, flavour_name, first)
    records = flow_invariants.check_run(fit["run_id"], [fit["directory"]])
    resumed = [(r.phase, r.epoch, r.samples, r.energy_kwh / WH) for r in records if r.attempt == 1 and r.energy_kwh]
    # `other` holds the loader's first batch (made before any hook of the batch), the epoch
    # everything after it: the other batches made and every step begun (none for a dropped batch).
    epoch_wh = fit["made"] - 1 + 2 * fit["steps"]
    dropped = {"dropped": 1, "all dropped": fit["made"]}.get(first, 0)
    assert fit["samples"] == 8 * (fit["made"] - dropped)
    assert resumed == [("other", None, 0, pytest.approx(1.0)),
                       ("train", 1, fit["samples"], pytest.approx(epoch_wh))], (resumed, fit)
    # No joule lost or counted twice: the records hold what the clock spent, over both attempts.
    assert sum(r.energy_kwh for r in records) == pytest.approx(fit["spent_kwh"], rel=1e-12)
