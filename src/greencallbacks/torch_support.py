"""Helpers shared by the adapters whose frameworks run on PyTorch (Lightning, HF Trainer).

Imported only by those adapters: ``import greencallbacks`` never imports torch.
"""

from __future__ import annotations

from typing import Any, Callable

from greencallbacks.samples import count_samples  # noqa: F401 - the name the adapters import


def device_and_sync(device: Any) -> tuple[list[int], Callable[[], None] | None]:
    """The CUDA indices a process trains on ([] off CUDA) and a function that waits for its work.

    Synchronising before each boundary read bills queued kernels to the window that launched
    them; it costs microseconds when the device is idle and happens a few times per epoch.
    """
    import torch

    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return [], None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return [index], lambda: torch.cuda.synchronize(index)
