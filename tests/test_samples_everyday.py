"""Everyday batch structures whose sample count was wrong yet recorded as exact.

``collate_fn=lambda batch: tuple(zip(*batch))`` (torchvision's detection collate, used for
classification too) over a ``TensorDataset`` gives a tuple of per-sample images beside a tuple of
per-sample labels, which are 0-d tensors (or of shape (1,)). Those labels counted for nothing, so
the images' channels (3) or a vector's width were recorded as each batch's samples; a last batch
of one counted its image's channels.

An EmbeddingBag's batch, ``((tokens, offsets), labels)``, read its (tokens, offsets) as two
sequences of different lengths: 2 samples, recorded as exact. It is uncounted now, with a warning
that says why (the same pair as top-level fields, the tutorial's ``(labels, tokens, offsets)``,
was already).

A dict whose first field is a per-batch tensor of shape (1,) (a task id, a temperature) beside a
batch of 8 counted 1, as exact: the dict's fast path took a leading dimension of 1 for a batch of
one without looking at the other fields.

What ``default_collate`` makes of a fixed-length list of texts per sample (multiple-choice options)
is one tuple of B texts per position: read as one record per sample, 4 options counted 4 samples a
batch, as exact, wherever the loader's word that it collates by default was not there (a Lightning
model overriding a batch-transfer hook). The rest of the batch now says which reading holds.

A list of texts or numbers beside tensors of another leading dimension (3 names beside a batch of 8,
a flat tensor of packed steps beside its lengths as a Python list) counted by whichever came first:
such fields disagree, as tensors that disagree do, and a model's named input or images decide.
"""

from __future__ import annotations

import warnings
from collections import UserDict

import pytest

torch = pytest.importorskip("torch")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.samples import BatchCounter, count_collated, count_samples  # noqa: E402
from test_samples_frameworks import by_phase, counted_in_every_loop, energy_warnings, lightning_module  # noqa: E402

TRAIN, VAL, TEST, PREDICT, BATCH = 23, 11, 7, 9, 5  # VAL ends with a batch of one


def zipped(samples: list) -> tuple:
    return tuple(zip(*samples))


def image() -> torch.Tensor:
    return torch.zeros(3, 8, 8)


@pytest.mark.parametrize("batch, samples", [
    ((tuple(image() for _ in range(5)), tuple(torch.tensor(i) for i in range(5))), 5),
    ((tuple(image() for _ in range(5)), tuple(torch.tensor([i]) for i in range(5))), 5),
    ((tuple(torch.zeros(7) for _ in range(5)), tuple(torch.tensor(1.0) for _ in range(5))), 5),
    ([[image() for _ in range(4)], [torch.tensor(i) for i in range(4)]], 4),
    ({"ids": [torch.zeros(7)] * 4, "label": [torch.tensor(1)] * 4}, 4),
    # A batch of one.
    (((image(),), (torch.tensor(3),)), 1),
    (((image(),), (torch.tensor([3]),)), 1),
], ids=["images, 0-d labels", "images, (1,) labels", "vectors, 0-d labels", "lists: images, 0-d labels",
        "dict of per-sample lists", "one image, 0-d label", "one image, (1,) label"])
def test_a_zip_collates_per_sample_images_beside_their_labels(batch, samples):
    assert count_samples(batch) == samples


@pytest.mark.parametrize("batch, samples", [
    (((torch.zeros(8, 4),), torch.zeros(8)), 8),  # ((x,), y): a 1-tuple of one input
    ({"inputs": {"ids": [torch.zeros(2, 4)]}}, 2),
    ({"a": [torch.zeros(8, 4)], "b": [torch.zeros(8, 10)]}, 8),
    ({"x": torch.zeros(6, 2), "weights": [torch.zeros(6, 2), torch.zeros(6, 2)]}, 6),
    ({"loss_weights": [torch.tensor(0.5), torch.tensor(2.0)], "x": torch.zeros(6, 3)}, 6),
], ids=["1-tuple of an input", "1-list in a dict", "1-lists agreeing", "fields beside a list", "0-d weights before x"])
def test_fields_stay_fields(batch, samples):
    # Guards for the rules above: one tensor in a list, same-shaped ones or 0-d ones, still count
    # as fields where nothing in the batch contradicts it.
    assert count_samples(batch) == samples


def embedding_bag_batch(lengths: list[int]):
    tokens = torch.zeros(sum(lengths), dtype=torch.long)
    offsets = torch.tensor([sum(lengths[:i]) for i in range(len(lengths))])
    return (tokens, offsets), torch.zeros(len(lengths))


@pytest.mark.parametrize("batch", [
    embedding_bag_batch([3, 5, 2, 4, 1]),
    {"x": embedding_bag_batch([3, 5, 2])[0], "y": torch.zeros(3)},
    {"seqs": [torch.zeros(n) for n in (3, 5, 2)], "vocabulary_mask": torch.zeros(7)},
], ids=["((tokens, offsets), labels)", "in a dict", "sequences beside a tensor of another length"])
def test_sequences_of_different_lengths_that_the_rest_of_the_batch_contradicts_are_uncounted(batch):
    assert count_samples(batch) is None
    with pytest.warns(EnergyWarning, match="reads as 2 samples|reads as 3 samples"):
        BatchCounter().count(batch, run_id="r")


def test_a_models_named_input_counts_beside_a_list_that_reads_otherwise():
    # A sample's several images (of different sizes) or image patches: the list's length is not
    # the samples'; input_ids' is.
    images = [torch.zeros(3, 8 + i, 8) for i in range(3)]
    assert count_samples({"input_ids": torch.zeros(2, 9), "pixel_values": images}) == 2
    assert count_samples({"input_ids": torch.zeros(2, 9), "patches": [torch.zeros(4 + i, 8) for i in range(3)]}) == 2
    assert count_samples({"patches": [torch.zeros(4 + i, 8) for i in range(3)], "labels": torch.zeros(2)}) is None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("labels", ["0-d", "(1,)"])
def test_lightning_counts_a_zip_collate_of_a_tensor_dataset_exactly(tmp_path, labels):
    """Regression: 3 samples a batch (the images' channels) were recorded, counted and silent:
    15 for 23 training samples, 9 for 11 validation ones."""
    def loader(n: int):
        y = torch.arange(n) if labels == "0-d" else torch.arange(n, dtype=torch.float32)[:, None]
        data = torch.utils.data.TensorDataset(torch.zeros(n, 3, 8, 8), y)
        return torch.utils.data.DataLoader(data, batch_size=BATCH, collate_fn=zipped)

    counted, said = counted_in_every_loop(tmp_path, loader, (TRAIN, VAL, TEST, PREDICT))
    assert counted == {"train": [(TRAIN, True)], "validation": [(VAL, True)], "test": [(TEST, True)],
                       "predict": [(PREDICT, True)]}
    assert not [m for m in said if "count the samples" in m]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_leaves_an_embedding_bag_batch_uncounted_with_one_warning(tmp_path):
    """Regression: ((tokens, offsets), labels) was counted 2 a batch, as exact."""
    L, AnyBatch = lightning_module()
    from greencallbacks.lightning import EnergyCallback

    def loader(n: int):
        def collate(indices):
            return embedding_bag_batch([1 + i % 4 for i in indices])

        return torch.utils.data.DataLoader(list(range(n)), batch_size=BATCH, collate_fn=collate)

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(AnyBatch(), loader(TRAIN), loader(VAL))
    phases = by_phase(read_records(tmp_path))
    assert [(r.samples_counted, r.energy_j_per_sample) for r in phases["train"] + phases["validation"]] == [
        (False, None), (False, None)]
    (message,) = [m for m in energy_warnings(caught) if "count the samples" in m]
    assert "EmbeddingBag" in message and "sample_counter=" in message


# ---------------------------------------------------------------- a per-batch field of one first
def per_batch_field_first(n: int) -> dict:
    return {"task": torch.tensor([2]), "x": torch.zeros(n, 3), "y": torch.zeros(n)}


@pytest.mark.parametrize("collate", [None, "rows", "default"])
def test_a_per_batch_field_of_one_first_is_no_batch_of_one(collate):
    """Regression: 1 sample a batch, as exact (HF's Trainer says "rows", Lightning "default")."""
    assert count_samples(per_batch_field_first(8), collate) is None
    with pytest.warns(EnergyWarning, match="leading dimensions differ: 1, 8"):
        BatchCounter().count(per_batch_field_first(8), run_id="r")
    named = {"task_id": torch.tensor([2]), "input_ids": torch.zeros(8, 9), "labels": torch.zeros(8)}
    assert count_samples(named, collate) == 8
    # Guards: a batch of one is one sample; a packed row, its sequences where no collate is known.
    assert count_samples({"x": torch.zeros(1, 3), "y": torch.zeros(1)}, collate) == 1
    row = {"input_ids": torch.zeros(1, 6, dtype=torch.long), "cu_seq_lens_q": torch.tensor([0, 3, 5, 6])}
    assert count_samples(row) == 3


# ---------------------------------------------------------------------- texts by position
def multiple_choice(n: int, label_first: bool = False) -> dict:
    samples = [{"choices": ["a", "b", "c", "d"], "label": i % 4} for i in range(n)]
    if label_first:
        samples = [{"label": s["label"], "choices": s["choices"]} for s in samples]
    return torch.utils.data.default_collate(samples)  # {"choices": [4 tuples of n texts], "label": (n,)}


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("label_first", [False, True], ids=["choices first", "label first"])
def test_texts_that_default_collate_gives_by_position_count_by_the_rest_of_the_batch(n, label_first):
    """Regression: 4 (the options) for every batch size but 4, as exact, without the loader's word."""
    batch = multiple_choice(n, label_first)
    assert count_samples(batch) == n
    assert count_collated(batch) == n


def test_texts_by_position_alone_are_uncounted_and_the_warning_says_why():
    batch = {"choices": multiple_choice(5)["choices"]}  # 5 samples of 4 options, or 4 of 5 words?
    assert count_samples(batch) is None
    with pytest.warns(EnergyWarning, match="tuples of texts of one length.*giving 4 or 5 samples"):
        BatchCounter().count(batch, run_id="r")


@pytest.mark.parametrize("batch, samples", [
    ({"tokens": [["w"] * (1 + i) for i in range(3)]}, 3),  # a sample's words, ragged
    ({"tokens": [["w", "x"] for _ in range(3)], "label": torch.zeros(3)}, 3),  # of one length, and labels
    ({"pairs": [("q", "a")] * 2}, 2),  # both readings agree
    ({"text": ["a", "b", "c"], "id": 7}, 3),
], ids=["ragged words", "words and labels", "pairs of two", "texts"])
def test_texts_by_sample_still_count(batch, samples):
    assert count_samples(batch) == samples


# --------------------------------------------------------- lists of texts or numbers that disagree
@pytest.mark.parametrize("batch", [
    {"names": ["a", "b", "c"], "x": torch.zeros(8, 3)},  # was 3
    {"x": torch.zeros(8, 3), "names": ["a", "b", "c"]},  # was 8: the order decided
    (["a", "b", "c"], torch.zeros(8, 3)),  # was 3
    (torch.zeros(30, 4), [10, 5, 15]),  # packed steps beside their lengths: was 30
    {"class_weights": [0.2, 0.8], "x": torch.zeros(8, 3), "y": torch.zeros(8)},  # was 2
    UserDict({"x": torch.zeros(8, 3), "names": ["a", "b", "c"]}),  # a Mapping that is no dict: was 8
], ids=["names first", "names last", "tuple", "packed steps, lengths", "weights first", "Mapping"])
def test_a_list_of_texts_or_numbers_of_another_length_than_the_tensors_is_uncounted(batch):
    assert count_samples(batch) is None
    with pytest.warns(EnergyWarning, match="leading dimensions differ"):
        BatchCounter().count(batch, run_id="r")


@pytest.mark.parametrize("batch, samples", [
    ({"candidate_labels": ["cat", "dog"], "pixel_values": torch.zeros(8, 3, 4, 4)}, 8),  # was 2
    ({"class_names": ["a", "b"], "input_ids": torch.zeros(8, 5)}, 8),  # was 2
    ((torch.zeros(3, 10, 4), [10, 5, 7], torch.zeros(3)), 3),  # padded steps, their lengths, labels
    ({"ids": [str(i) for i in range(8)], "x": torch.zeros(8, 3)}, 8),
    ((torch.zeros(8, 3), ("a",) * 8), 8),
], ids=["candidate labels, images", "class names, input_ids", "lengths that agree", "ids first", "texts last"])
def test_a_list_of_texts_or_numbers_beside_tensors_counts_where_a_field_says(batch, samples):
    assert count_samples(batch) == samples


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_counts_texts_by_position_when_a_hook_may_remake_the_batch(tmp_path):
    """Regression: with a batch-transfer hook overridden, Lightning gives no word about the collate:
    20 training samples of 23 were recorded (4 options a batch, and 3 for the last batch)."""
    L, AnyBatch = lightning_module()
    from greencallbacks.lightning import EnergyCallback

    class OnTheDevice(AnyBatch):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch  # e.g. augmentations on the device

    def loader(n: int, kind: str):
        if kind == "options":
            return torch.utils.data.DataLoader(
                [{"choices": ["a", "b", "c", "d"], "label": i % 4} for i in range(n)], batch_size=BATCH)
        return torch.utils.data.DataLoader(list(range(n)), batch_size=BATCH,
                                           collate_fn=lambda b: per_batch_field_first(len(b)))

    for kind, expected in (("options", [(TRAIN, True), (VAL, True)]), ("per-batch field", [(None, False)] * 2)):
        out = tmp_path / kind
        callback = EnergyCallback(output_dir=out, intensity=100.0, progress_bar=False)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                            num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(OnTheDevice(), loader(TRAIN, kind), loader(VAL, kind))
        phases = by_phase(read_records(out))
        records = phases["train"] + phases["validation"]
        assert [(r.samples if r.samples_counted else None, r.samples_counted) for r in records] == expected, kind
        assert all((r.energy_j_per_sample is None) is (not r.samples_counted) for r in records)
        counting = [m for m in energy_warnings(caught) if "count the samples" in m]
        assert len(counting) == (kind != "options"), counting
