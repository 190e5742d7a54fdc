"""A list of records inside a batch beside a field that gives another count (2026-12-07).

Records inside a batch (dicts, tuples, dataclasses) read as one sample each: a detection batch's
targets. Taken as certain, they won wherever the list came first, whatever the rest of the batch
said: sentence-transformers' ``smart_batching_collate`` gives ``([features_a, features_b],
labels)``, one tokenized batch per input, and a batch of 16 pairs counted 2, silently. Now the
list's count holds only where no other field contradicts it; else the batch is uncounted, with
the warning.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.samples import BatchCounter, count_samples  # noqa: E402


def features(samples: int) -> dict:
    return {"input_ids": torch.ones(samples, 7, dtype=torch.long), "attention_mask": torch.ones(samples, 7)}


def pairs(samples: int) -> tuple:
    """What sentence-transformers' ``smart_batching_collate`` returns for ``samples`` text pairs."""
    return [features(samples), features(samples)], torch.ones(samples)


@pytest.mark.parametrize("batch", [
    pairs(16),
    {"features": [features(16), features(16)], "labels": torch.ones(16)},
], ids=["tuple", "dict"])
def test_per_input_batches_in_a_list_beside_labels_count_the_labels_not_their_number(batch):
    # Was 2; then uncounted where the list came first, though (labels, [features_a, features_b]) counted 16.
    assert count_samples(batch) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyWarning)
        assert BatchCounter().count(batch, run_id="r") == (16, 0)


@pytest.mark.parametrize("batch, samples", [
    ((torch.zeros(2, 3, 8, 8), [{"boxes": torch.zeros(5, 4)}, {"boxes": torch.zeros(1, 4)}]), 2),
    (([{"boxes": torch.zeros(5, 4)}, {"boxes": torch.zeros(1, 4)}], torch.zeros(2, 3, 8, 8)), 2),
    ({"targets": [{"boxes": torch.zeros(5, 4)} for _ in range(3)]}, 3),
], ids=["images first", "targets first", "targets alone"])
def test_detection_targets_still_count_a_sample_each(batch, samples):
    assert count_samples(batch) == samples


def test_lightning_fit_with_a_pair_collate_records_no_wrong_count(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader

    from greencallbacks.lightning import EnergyCallback

    class PairModel(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(8, 4)

        def training_step(self, batch, batch_idx):
            (a, b), labels = batch
            similarity = (self.embed(a["input_ids"]) * self.embed(b["input_ids"])).sum(-1)
            return torch.nn.functional.mse_loss(similarity, labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = DataLoader(range(23), batch_size=5, collate_fn=lambda items: pairs(len(items)))
    callback = EnergyCallback(output_dir=tmp_path, country="FR", progress_bar=False)
    trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(PairModel(), loader)
    (train,) = [r for r in read_records(tmp_path) if r.phase == "train"]
    # 23 pairs in 5 batches: the record said 10 (2 per batch), counted, with a cost per sample.
    assert train.samples_counted and train.samples == 23
    assert not [str(w.message) for w in caught if "a list of 2 records" in str(w.message)]
