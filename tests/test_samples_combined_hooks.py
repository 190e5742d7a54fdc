"""Several training loaders combined by Lightning, through a model that overrides a batch hook.

A model or data module that overrides ``on_before_batch_transfer``, ``transfer_batch_to_device``
or ``on_after_batch_transfer`` may remake the combined batch (into one tensor), so the callback
cannot trust the loaders' collates. A hook that only augments keeps one batch per loader,
``{"a": [x, y], "b": [x, y]}``, which counted as a whole read as 2 samples a step, marked exact.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402

pytestmark = pytest.mark.slow

# 30 and 10 samples in batches of 8 and 4: Lightning's max_size_cycle runs 4 steps, a's batches
# (8, 8, 8, 6) and b's (4, 4, 2) cycling to (4, 4, 2, 4): 30 + 14 samples trained.
TRAINED = 30 + 14


class Augmenting(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.w ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return batch  # augmentations on the device, the combined batch kept as it came


class Concatenating(Augmenting):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        # The loaders' batches made into one batch of fields (x, y): a tuple, where Lightning gives
        # the list's batches as a list.
        return torch.cat([batch[0][0], batch[1][0]]), torch.cat([batch[0][1], batch[1][1]])


class ConcatenatingIntoAList(Augmenting):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        return [torch.cat([batch[0][0], batch[1][0]]), torch.cat([batch[0][1], batch[1][1]])]


class BareTensors(Augmenting):
    def on_after_batch_transfer(self, batch, dataloader_idx):
        return [x * 2 for x in batch]  # [x_a, x_b]: as (x, y) of different rows


def _pairs(n: int, size: int):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(n, 4), torch.randn(n, 1)), batch_size=size)


def _bare(n: int, size: int):
    return torch.utils.data.DataLoader(torch.randn(n, 4), batch_size=size)


def _fit(tmp_path, model, loaders):
    from greencallbacks.lightning import EnergyCallback

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loaders)
    counting = [w for w in caught if issubclass(w.category, EnergyWarning) and "count the samples" in str(w.message)]
    (record,) = [r for r in read_records(tmp_path) if r.phase == "train"]
    return (record.samples if record.samples_counted else None), len(counting)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("model, make, shape, expected", [
    (Augmenting, _pairs, dict, (TRAINED, 0)),  # counted 2 a step: 8 for 44
    (Augmenting, _pairs, list, (TRAINED, 0)),  # 8 for 44
    (Augmenting, _bare, dict, (TRAINED, 0)),
    (BareTensors, _bare, list, (None, 1)),  # [x_a (8, 4), x_b (4, 4)] read as 2 sequences: 8 for 44
    (Concatenating, _pairs, list, (TRAINED, 0)),
    (ConcatenatingIntoAList, _pairs, list, (None, 1)),  # [x (12, 4), y (12, 1)], or two loaders' batches?
    (Augmenting, _pairs, tuple, (TRAINED, 0)),  # a tuple of loaders: Lightning's batches are tuples
])
def test_a_combined_batch_through_a_batch_hook_counts_each_loaders_batch(tmp_path, model, make, shape, expected):
    loaders = {"a": make(30, 8), "b": make(10, 4)}
    assert _fit(tmp_path, model(), loaders if shape is dict else shape(loaders.values())) == expected
