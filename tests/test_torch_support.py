"""Counting samples in a batch: every shape of batch the adapters see, fast path and general walk."""

from __future__ import annotations

from collections import UserDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from greencallbacks.torch_support import count_samples, device_and_sync  # noqa: E402


@pytest.mark.parametrize(
    "batch, samples",
    [
        (torch.zeros(7, 3), 7),  # a tensor
        ((torch.zeros(5, 3), torch.zeros(5)), 5),  # (x, y)
        ([torch.zeros(4, 3), torch.zeros(4)], 4),
        (np.zeros((6, 2)), 6),  # an array
        ({"input_ids": torch.zeros(3, 16), "labels": torch.zeros(3)}, 3),  # a dict of tensors
        (UserDict({"input_ids": torch.zeros(9, 16)}), 9),  # a Mapping that is not a dict (BatchEncoding)
        ({"meta": "x", "inputs": [torch.zeros(2, 4)]}, 2),  # nested, the tensor not first
        ((torch.tensor(1.0), torch.zeros(8, 2)), 8),  # a 0-d tensor has no samples: the next one counts
        ([3, 1, 2], 3),  # a list of labels
        (["a", "b"], 2),  # a list of strings
        ((), 0),
        ({}, 0),
        (None, 0),
        (torch.tensor(2.0), 0),
    ],
)
def test_count_samples_finds_the_leading_dimension(batch, samples):
    assert count_samples(batch) == samples


def test_no_sync_off_cuda():
    assert device_and_sync("cpu") == ([], None)
    assert device_and_sync(None) == ([], None)
