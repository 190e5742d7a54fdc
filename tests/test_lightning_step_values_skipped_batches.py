"""A training batch that Lightning skips: a ``collate_fn`` that returns ``None`` to drop a bad
batch (Lightning warns "train_dataloader yielded None. If this was on purpose, ignore this
warning", runs no ``training_step``, calls ``on_train_batch_end`` with ``None`` and still counts
the batch in ``_batches_that_stepped``, the count its logs go by, while ``global_step`` does not move).

Until 2026-12-06 the callback judged the logging steps by ``global_step`` from the fit's first
batch: two epochs of 12 batches with the second batch dropped (``log_every_n_steps=4``), Lightning
logged at steps 3, 7, 11, 15, 19 and 23, the energy values went to steps 4, 8, 12, 16 and 20 (a
dropped first batch put them 5 steps off). And it counted the ``None`` batch as one it could not
count: the epoch's record said 44 samples, ``samples_counted: false``, with a warning to pass a
``sample_counter``.

A scripted sensor on a fake clock (1 Wh a batch) makes each value exact.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.fakes.scripted import FakeClock  # noqa: E402

WH = 1e-3  # kWh: one fake second at 3600 W
BATCHES = 12  # an epoch's, of 4 samples each
CASES = [({1}, 1, 4), ({0, 5, 6}, 1, 3), ({2, 9}, 2, 2)]  # (batches dropped, counted over the fit; accumulation; log_every_n_steps)


def fit_dropping(tmp_path: Path, flavour_name: str, dropped: set[int], accumulate: int, every: int) -> dict:
    """Two epochs; what Lightning's CSV logger, the records and the warnings got, and the run's energy at each step."""
    from torch.utils.data import DataLoader, TensorDataset, default_collate

    from lightning_models import flavour, trainer_kwargs
    from tests.test_budget_frameworks import H100

    L, EnergyCallback, TinyModel = flavour(flavour_name)
    clock, spent = FakeClock(), [0.0]
    made = []

    def collate(samples):
        made.append(len(made))
        return None if made[-1] in dropped else default_collate(samples)

    generator = torch.Generator().manual_seed(0)
    size = 4 * BATCHES
    data = DataLoader(TensorDataset(torch.randn(size, 4, generator=generator), torch.randn(size, 1, generator=generator)),
                      batch_size=4, collate_fn=collate)
    at_batch_end = {}

    class Tick(L.Callback):  # before EnergyCallback: a batch's step value includes the batch
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)
            spent[0] += WH

    class Noted(L.Callback):  # after it: the run's energy at the step Lightning's loggers use
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            at_batch_end.setdefault(trainer.fit_loop.epoch_loop._batches_that_stepped, []).append(spent[0])

    class StepLogging(TinyModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("step_loss", loss, on_step=True, on_epoch=False)  # Lightning's own logging steps
            return loss

    logger = L.loggers.CSVLogger(tmp_path, name="csv", version="v")
    callback = EnergyCallback(output_dir=tmp_path / "energy", sensors=[H100("gpu0", clock, power_w=3600.0)],
                              intensity=300.0)
    trainer = L.Trainer(logger=logger, callbacks=[Tick(), callback, Noted()],
                        **trainer_kwargs(max_epochs=2, log_every_n_steps=every, accumulate_grad_batches=accumulate))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(StepLogging(), data)
    assert any("yielded None" in str(w.message) for w in caught)  # Lightning's skip
    return {"rows": list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open())),
            "records": read_records(tmp_path / "energy"), "at_batch_end": at_batch_end,
            "warnings": [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]}


@pytest.mark.parametrize("flavour_name", ["lightning.pytorch", "pytorch_lightning"])
@pytest.mark.parametrize(("dropped", "accumulate", "every"), CASES)
def test_step_values_stay_on_lightnings_steps_after_a_dropped_batch(tmp_path, flavour_name, dropped, accumulate, every):
    fit = fit_dropping(tmp_path, flavour_name, dropped, accumulate, every)
    lightnings = [int(r["step"]) for r in fit["rows"] if r.get("step_loss")]
    ours = [(int(r["step"]), float(r["energy_kwh_total"])) for r in fit["rows"]
            if r.get("energy_kwh_total") and not r.get("energy_kwh")]
    assert lightnings, "Lightning logged no step metrics: the scenario does not test anything"
    assert [step for step, _ in ours] == lightnings
    for step, kwh in ours:
        spent = fit["at_batch_end"][step]
        assert any(kwh == pytest.approx(then, abs=1e-12) for then in spent), (
            f"step {step} logged {kwh / WH:.3f} Wh, the run had spent {[k / WH for k in spent]}")


@pytest.mark.parametrize(("dropped", "accumulate", "every"), CASES)
def test_a_dropped_batch_counts_no_sample_and_leaves_the_epoch_counted(tmp_path, dropped, accumulate, every):
    fit = fit_dropping(tmp_path, "lightning.pytorch", dropped, accumulate, every)
    trained = [4 * (BATCHES - len(dropped & set(range(epoch * BATCHES, (epoch + 1) * BATCHES)))) for epoch in range(2)]
    epochs = [r for r in fit["records"] if r.phase == "train"]
    assert [(r.samples, r.samples_counted) for r in epochs] == [(samples, True) for samples in trained]
    assert fit["warnings"] == []
