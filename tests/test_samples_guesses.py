"""Everyday batches whose sample count was a guess recorded as exact (2026-12-05).

* A zip collate, ``tuple(zip(*batch))``, of samples without labels (a ``TensorDataset`` of images
  for predict) gives ``((image, ..., image),)``: the images' leading dimension, their channels,
  counted 3 for 5 images (and 3 for a last batch of one). Same-shaped tensors in a list are fields
  or one sample each; only a count both readings allow is exact, else uncounted with a warning.
* HF image processors and feature extractors with ``return_tensors=None`` give
  ``{"pixel_values": [B arrays]}``: 3 (the channels) for 4 images. A model's named input given as
  a list holds one item per sample.
* Named tuples of different classes in a list (``default_collate`` keeps a named tuple's class:
  ``[Inputs(ids, mask), Targets(y, w)]``) read as 2 samples, as ``collate_fn=list`` records.
* A graph batch without ``num_graphs`` (PyTorch Geometric's attribute names) counted its
  ``len()``, its attribute count: ``ptr`` or a CPU ``batch`` vector say how many graphs it holds.
* ``input_ids`` packed (1, tokens) without ``position_ids`` beside per-token labels (B, T) counted 1.
* A per-batch (1,) tensor first in a nested mapping counted 1, as the flat case once did.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.samples import BatchCounter, count_samples  # noqa: E402


def zipped(samples: list) -> tuple:
    return tuple(zip(*samples))


def image(height: int = 8) -> torch.Tensor:
    return torch.zeros(3, height, 8)


def warnings_for(batch) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = BatchCounter()
        for _ in range(3):
            assert counter.count(batch, run_id="r") == (None, 0)
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]


# ------------------------------------------------------------------ zip collate without labels
@pytest.mark.parametrize("batch", [
    zipped([(image(),) for _ in range(5)]),  # 3 channels, 5 images
    zipped([(image(),)]),  # a last batch of one: 3
    zipped([(torch.zeros(7),) for _ in range(5)]),  # vectors: their width, 7
    zipped([image() for _ in range(5)]),  # samples that are tensors: zip splits each one by channel
    {"images": [image() for _ in range(4)]},
], ids=["5 images", "one image", "5 vectors", "bare tensors", "dict of a list of images"])
def test_a_zip_collate_of_samples_without_labels_is_uncounted_not_their_channels(batch):
    assert count_samples(batch) is None
    (message,) = warnings_for(batch)
    assert "zip collate" in message and "sample_counter=" in message


@pytest.mark.parametrize("batch, samples", [
    (zipped([(image(),) for _ in range(3)]), 3),  # both readings give 3
    (zipped([(image(), torch.zeros(5)) for _ in range(4)]), 4),  # two inputs: only 4 fits both
    (zipped([(image(), torch.tensor(1)) for _ in range(5)]), 5),  # with labels
    (((torch.zeros(8, 4),), torch.zeros(8)), 8),  # ((x,), y): one input in a tuple
    ({"a": [torch.zeros(8, 4)], "b": [torch.zeros(8, 10), torch.zeros(8, 10)]}, 8),  # lists agreeing
])
def test_lists_of_same_shaped_tensors_count_where_the_readings_agree(batch, samples):
    assert count_samples(batch) == samples


# ---------------------------------------------------------------- named input given as a list
def test_a_named_input_given_as_a_list_counts_its_items():
    assert count_samples({"pixel_values": [np.zeros((3, 16, 16)) for _ in range(4)]}) == 4
    assert count_samples({"pixel_values": [image() for _ in range(4)], "labels": torch.zeros(4)}) == 4
    assert count_samples({"pixel_values": [image()]}) == 1
    assert count_samples({"input_values": [np.zeros(1600) for _ in range(2)]}) == 2  # audio, unpadded
    # Beside a named input tensor, a list of images is a sample's several images: input_ids decide.
    assert count_samples({"pixel_values": [image(8 + i) for i in range(3)], "input_ids": torch.zeros(2, 9)}) == 2


def test_an_image_processors_batch_feature_of_arrays_counts_its_images():
    transformers = pytest.importorskip("transformers")
    features = transformers.BatchFeature({"pixel_values": [np.zeros((3, 16, 16)) for _ in range(4)]})
    assert count_samples(features) == 4


# ------------------------------------------------------------------------------ named tuples
class Inputs(NamedTuple):
    ids: torch.Tensor
    mask: torch.Tensor


class Targets(NamedTuple):
    y: torch.Tensor
    weight: torch.Tensor


def test_named_tuples_of_different_classes_in_a_list_are_fields():
    inputs, targets = Inputs(torch.zeros(8, 16), torch.ones(8, 16)), Targets(torch.zeros(8), torch.ones(8))
    assert count_samples([inputs, targets]) == 8
    assert count_samples((inputs, targets)) == 8
    assert count_samples((inputs, Targets(torch.zeros(8), torch.ones(8))[:1])) == 8
    # Guard: records of one class are samples (collate_fn=list).
    assert count_samples([Inputs(torch.zeros(16), torch.ones(16)) for _ in range(3)]) == 3


# ------------------------------------------------------------------------------------ graphs
class GraphBatch:
    """PyTorch Geometric's attribute names; ``len()`` is the attribute count, as in its ``Data``."""

    def __init__(self, graphs: int, nodes_each: int = 10, ptr: bool = True, batch: bool = True,
                 device: str = "cpu") -> None:
        nodes = graphs * nodes_each
        self.x = torch.zeros(nodes, 4, device=device)
        self.edge_index = torch.zeros(2, 3 * nodes, dtype=torch.long, device=device)
        self.y = torch.zeros(graphs, device=device)
        if batch:
            self.batch = torch.arange(graphs, device=device).repeat_interleave(nodes_each)
        if ptr:
            self.ptr = torch.arange(0, nodes + 1, nodes_each, device=device)

    def __len__(self) -> int:
        return len(vars(self))


@pytest.mark.parametrize("batch, samples", [
    # 6 graphs: len() is 5 (4 without ptr).
    (GraphBatch(6), 6),
    (GraphBatch(6, ptr=False), 6),
    (GraphBatch(6, device="meta"), 6),  # ptr's shape: no read of the device
    ((GraphBatch(6, ptr=False), torch.zeros(6)), 6),
    (GraphBatch(6, ptr=False, device="meta"), None),  # counting its batch vector would read the device
    (GraphBatch(1, ptr=False, batch=False), None),  # a single graph's Data
], ids=["ptr", "batch vector", "ptr on a device", "(graphs, y)", "batch vector on a device", "single graph"])
def test_a_graph_batch_without_num_graphs_counts_its_graphs_not_its_attributes(batch, samples):
    assert count_samples(batch) == samples
    if samples is None:
        (message,) = warnings_for(batch)
        assert "graph batch without num_graphs" in message


# ------------------------------------------------------------------------- packed and nested
def test_per_token_labels_beside_a_packed_row_without_positions_are_uncounted():
    assert count_samples({"input_ids": torch.zeros(1, 60), "labels": torch.zeros(4, 15)}) is None
    # Guards: a batch of one, with image patches beside it (a VLM's flattened pixel_values).
    one = {"input_ids": torch.zeros(1, 9), "pixel_values": torch.zeros(64, 1176),
           "image_grid_thw": torch.zeros(1, 3), "labels": torch.zeros(1, 9)}
    assert count_samples(one) == 1
    assert count_samples({"input_ids": torch.zeros(4, 15), "labels": torch.zeros(4, 15)}) == 4


def test_a_per_batch_tensor_first_in_a_nested_mapping_is_no_batch_of_one():
    batch = {"meta": {"temperature": torch.zeros(1)}, "inputs": {"x": torch.zeros(6, 3)}}
    assert count_samples(batch) is None
    (message,) = warnings_for(batch)
    assert "(1,)" in message
    # Guard: a batch of one. The batch's own tensors first are no surer (they counted 6, the same
    # fields in another order nothing): uncounted as the flat {"temperature": (1,), "x": (6, 3)} is.
    assert count_samples({"meta": {"temperature": torch.zeros(1)}, "inputs": {"x": torch.zeros(1, 3)}}) == 1
    assert count_samples({"inputs": {"x": torch.zeros(6, 3)}, "meta": {"temperature": torch.zeros(1)}}) is None


# ----------------------------------------------------------------- everyday batches, still exact
@pytest.mark.parametrize("batch, samples", [
    ({"input_values": torch.zeros(4, 1600), "attention_mask": torch.ones(4, 1600)}, 4),
    (([image(8 + i) for i in range(2)], [{"boxes": torch.zeros(3, 4), "labels": torch.zeros(3)}] * 2), 2),
    (([image()], [{"boxes": torch.zeros(3, 4), "labels": torch.zeros(3)}]), 1),
    ([{"x": torch.zeros(5), "y": torch.tensor(1)} for _ in range(4)], 4),
    ({"inputs": {"a": torch.zeros(6, 3), "b": torch.zeros(6, 2)}, "y": torch.zeros(6)}, 6),
    ((torch.zeros(5, 3, device="meta"), torch.zeros(5, device="meta")), 5),
], ids=["audio with a mask", "detection", "detection, one image", "list of dicts", "nested dicts", "meta device"])
def test_everyday_batches_stay_exact(batch, samples):
    assert count_samples(batch) == samples


def test_a_packed_row_with_the_flash_attention_kernels_offsets_counts_its_sequences():
    """A collator written for FlashAttention's varlen kernels names the offsets ``cu_seqlens``
    (transformers' ``cu_seq_lens_q``): 3 sequences packed in one row counted 1, marked exact."""
    row = {"input_ids": torch.zeros(1, 20, dtype=torch.long), "cu_seqlens": torch.tensor([0, 5, 12, 20])}
    assert count_samples(row) == 3
    assert count_samples({**row, "labels": torch.zeros(1, 20, dtype=torch.long)}) == 3
    assert count_samples({"input_ids": torch.zeros(1, 20, dtype=torch.long)}) == 1  # a batch of one, as before
