"""The helpers shared by the torch-based adapters (counting itself is tested in test_samples.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from greencallbacks import samples  # noqa: E402
from greencallbacks.torch_support import count_samples, device_and_sync  # noqa: E402


def test_count_samples_is_the_core_counter():
    assert count_samples is samples.count_samples


def test_no_sync_off_cuda():
    assert device_and_sync("cpu") == ([], None)
    assert device_and_sync(None) == ([], None)
