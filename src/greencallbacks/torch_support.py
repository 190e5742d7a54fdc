"""Helpers shared by the adapters whose frameworks run on PyTorch (Lightning, HF Trainer).

Imported only by those adapters: ``import greencallbacks`` never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable


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


def count_samples(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor-like element.

    Handles tensors, arrays, mappings (HF ``BatchEncoding`` / dicts of tensors), lists and tuples
    (``(x, y)``). Returns 0 when nothing in the batch has a length.
    """
    # Fast paths for the usual batches, a tensor or ``(x, y)``: this runs every step, with the
    # caches cold from the step's own work, where the general walk below costs several us.
    # (Exact type checks first: a failed getattr costs an exception, an ABC check a lookup.)
    kind = type(batch)
    if kind is list or kind is tuple:
        first = batch[0] if batch else None
    elif kind is dict:
        first = next(iter(batch.values()), None)
    else:
        first = batch
    shape = getattr(first, "shape", None)
    if shape:
        return int(shape[0])
    stack = [batch]
    while stack:
        item = stack.pop(0)
        shape = getattr(item, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            if item and all(isinstance(x, (int, float, str)) for x in item):
                return len(item)  # a list of labels or strings
            stack.extend(item)
    return 0
