"""Lists of records (detection targets, per-sample metadata) through the real loops (2026-12-07).

Since a list of records inside a batch became a possible count, not a certain one, it holds only
where nothing in the batch contradicts it. These batches say nothing else: every split must still
count its data set's length exactly, last partial batch included, with no warning, whatever the
records hold (boxes whose count equals the batch size by chance).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest

torch = pytest.importorskip("torch")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402

TRAIN, VAL, BATCH = 23, 11, 5  # last batches of 3 and 1


@dataclasses.dataclass
class Source:
    name: str
    offset: int


def target(i: int) -> dict:
    boxes = i % 7  # 5 boxes (the batch size) in some, none in others
    return {"boxes": torch.zeros(boxes, 4), "labels": torch.zeros(boxes, dtype=torch.long), "image_id": i}


def image(i: int) -> torch.Tensor:
    return torch.zeros(3, 8 + i % 3, 8)  # sizes differ: no stacking


COLLATES = {
    "torchvision zip": lambda items: tuple(zip(*[(image(i), target(i)) for i in items])),
    "list of images, list of targets": lambda items: ([image(i) for i in items], [target(i) for i in items]),
    "stacked images, targets": lambda items: (torch.zeros(len(items), 3, 8, 8), [target(i) for i in items]),
    "targets, stacked images": lambda items: ([target(i) for i in items], torch.zeros(len(items), 3, 8, 8)),
    "dict of images and targets": lambda items: {"images": [image(i) for i in items],
                                                 "targets": [target(i) for i in items]},
    "ids beside meta dicts": lambda items: {"meta": [{"source": "web", "n": i} for i in items],
                                            "input_ids": torch.ones(len(items), 7, dtype=torch.long)},
    "messages": lambda items: {"messages": [[{"role": "user", "content": str(i)}] for i in items]},
    "id tuples beside x": lambda items: ([("id", i) for i in items], torch.zeros(len(items), 4)),
    "dataclasses beside x": lambda items: (torch.zeros(len(items), 4), [Source("web", i) for i in items]),
}


def _energy_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught
            if issubclass(w.category, EnergyWarning) and "could not count" in str(w.message)]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", COLLATES)
def test_lightning_counts_record_batches_exactly(tmp_path, kind):
    from torch.utils.data import DataLoader

    from tests.test_samples_frameworks import lightning_module

    L, AnyBatch = lightning_module()  # (skips without Lightning)
    from greencallbacks.lightning import EnergyCallback

    def loader(n, offset=0):
        return DataLoader(range(offset, offset + n), batch_size=BATCH, collate_fn=COLLATES[kind])

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[callback], num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(AnyBatch(), loader(TRAIN), loader(VAL, offset=100))
    records = read_records(tmp_path)
    assert [r.samples for r in records if r.phase == "train"] == [TRAIN, TRAIN]
    assert [r.samples for r in records if r.phase == "validation"] == [VAL, VAL]
    assert all(r.samples_counted for r in records)
    assert not _energy_warnings(caught)


def test_hf_trainer_counts_ids_beside_per_sample_metadata(tmp_path):
    pytest.importorskip("transformers")
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import TokenDataset, tiny_model, training_args

    model = tiny_model()
    forward = model.forward

    def forward_with_meta(input_ids=None, attention_mask=None, labels=None, meta=None):
        assert len(meta) == len(input_ids)
        return forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    model.forward = forward_with_meta

    def collate(items):
        batch = {key: torch.stack([item[key] for item in items]) for key in ("input_ids", "attention_mask", "labels")}
        return {"meta": [{"source": "web", "row": int(ids[0])} for ids in batch["input_ids"]], **batch}

    train, val = TokenDataset(TRAIN), TokenDataset(VAL, seed=1)
    trainer = Trainer(model=model, args=training_args(tmp_path / "out", per_device_train_batch_size=BATCH,
                                                       per_device_eval_batch_size=BATCH, remove_unused_columns=False),
                      train_dataset=train, eval_dataset=val, data_collator=collate,
                      callbacks=[EnergyCallback(intensity=100.0)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    records = read_records(tmp_path / "out")
    assert [r.samples for r in records if r.phase == "train"] == [TRAIN, TRAIN]
    assert [r.samples for r in records if r.phase == "validation"] == [VAL, VAL]
    assert not _energy_warnings(caught)


def _two_records() -> list:
    return [{"boxes": torch.zeros(5, 4)}, {"boxes": torch.zeros(1, 4)}]


@pytest.mark.parametrize("batch, where", [
    (lambda n: (_two_records(), torch.ones(n)), "batch[0]"),
    (lambda n: {"inputs": {"targets": _two_records(), "x": torch.ones(n, 3)}}, "batch['inputs']['targets']"),
], ids=["tuple", "nested dict"])
def test_the_warning_about_contradicted_records_names_their_list_and_the_other_count_once_per_run(batch, where):
    from greencallbacks.samples import BatchCounter

    counter = BatchCounter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for samples in (16, 16, 7):  # the last batch of another size
            assert counter.count(batch(samples), run_id="r") == (None, 0)
    (message,) = _energy_warnings(caught)
    # It said "a list of 2 records ... in it": which list, in a batch of several, and against what?
    assert f"a list of 2 records (dicts, tuples or dataclasses) in it, {where}, reads as 2 samples" in message
    assert "contradicts (it gives 16)" in message
