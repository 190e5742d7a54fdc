"""A DataLoader with its automatic batching off (``batch_size=None``) through the real Lightning loops.

Such a loader hands on each item of its data set uncollated: a sample ``[x (3,), y ()]`` was read
as fields and counted by x's leading dimension, 33 trained for 11 samples, marked exact (until
2026-12-07). Lightning sees the loader: an item holding a sample's own value (its label) beside
its tensors is one sample. An item that is a batch the data set made itself (bulk reads, an
iterable of batches) still counts its rows: a rule of one sample per item would count it 11.
"""

from __future__ import annotations


import pytest

torch = pytest.importorskip("torch", reason="the DataLoader is torch's")

from greencallbacks.samples import count_samples  # noqa: E402

TRAIN, VAL, TEST, PREDICT = 11, 7, 5, 3
ROWS = 4  # per item, where the data set makes its own batches


def samples_with_labels(n):
    return torch.utils.data.TensorDataset(torch.randn(n, 3), torch.arange(n))  # items (x (3,), y 0-d)


def dicts_with_int_labels(n):
    return [{"x": torch.randn(4), "label": i % 2} for i in range(n)]  # a label as a Python int


def made_batches(n):
    return [(torch.randn(ROWS, 3), torch.arange(ROWS)) for _ in range(n)]  # the data set's own batches


DATA = {"samples with 0-d labels": (samples_with_labels, 1), "dicts with int labels": (dicts_with_int_labels, 1),
        "batches the data set made": (made_batches, ROWS)}


def fit_test_predict(tmp_path, make):
    from torch.utils.data import DataLoader

    from tests.test_samples_frameworks import counted_in_every_loop

    counted, said = counted_in_every_loop(tmp_path, lambda n: DataLoader(make(n), batch_size=None),
                                          (TRAIN, VAL, TEST, PREDICT), num_sanity_val_steps=1)
    return counted, [m for m in said if "could not count" in m]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", DATA)
def test_lightning_counts_the_items_of_an_unbatched_loader_in_every_loop(tmp_path, kind):
    make, per_item = DATA[kind]
    counted, messages = fit_test_predict(tmp_path, make)
    assert counted == {"train": [(TRAIN * per_item, True)], "validation": [(VAL * per_item, True)],
                       "test": [(TEST * per_item, True)], "predict": [(PREDICT * per_item, True)]}
    assert not messages


def test_an_unbatched_item_is_one_sample_where_a_value_of_its_own_says_so():
    x = torch.randn(3)
    assert count_samples([x, torch.tensor(1)], "unbatched") == 1
    assert count_samples([x, 1.5], "unbatched") == 1
    assert count_samples({"x": x, "label": "cat"}, "unbatched") == 1
    assert count_samples(["a text", 3], "unbatched") == 1  # read as 2 samples without the loader's word
    # A batch the data set made: its rows, as without the word.
    assert count_samples([torch.randn(4, 3), torch.arange(4)], "unbatched") == 4
    assert count_samples({"texts": ["a", "b"], "labels": [0, 1]}, "unbatched") == 2
    assert count_samples(["a", "b", "c"], "unbatched") == 3  # a batch of texts
    assert count_samples([x, None], "unbatched") == 3  # no value of its own: read as the batch it may be


def test_loader_collate_reads_automatic_batching_from_the_public_attributes():
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    from greencallbacks.torch_support import loader_collate

    data = samples_with_labels(6)
    assert loader_collate(DataLoader(data, batch_size=None)) == "unbatched"
    assert loader_collate(DataLoader(data, batch_size=None, collate_fn=list)) == "unbatched"  # each item alone still
    assert loader_collate(DataLoader(data, batch_size=2)) == "default"
    assert loader_collate(DataLoader(data, batch_size=2, collate_fn=list)) == "list"
    # A batch sampler leaves batch_size None, and batches.
    batches = BatchSampler(SequentialSampler(data), batch_size=2, drop_last=False)
    assert loader_collate(DataLoader(data, batch_sampler=batches)) == "default"
    assert loader_collate([(torch.randn(2, 3), torch.arange(2))]) is None  # no DataLoader
