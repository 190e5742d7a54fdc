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


def loader_collate(loader: Any) -> str | None:
    """What makes the batches of ``loader``, in the words of ``count_samples``' ``collate``, for an
    adapter that sees its data loaders: ``"unbatched"``, a DataLoader whose automatic batching is
    off (``batch_size=None`` and no ``batch_sampler``: each batch is one item of its data set,
    through ``collate_fn`` alone, by default ``default_convert``: tensors, not collated); ``"default"``, torch's
    ``default_collate`` (a list in such a batch is its fields); ``"list"``, ``collate_fn=list``
    (the batch is its samples, equal-length tensors too); None, another, or no DataLoader.

    Read from the DataLoader's public attributes, which torch has kept since 1.2 (torch 2.2, the
    floor Lightning 2.2 sets, included): its private ``_auto_collation`` says the same."""
    from torch.utils.data import default_collate  # torch >= 1.11

    unset = object()  # an iterable of another kind may lack either attribute: no DataLoader
    if getattr(loader, "batch_size", unset) is None and getattr(loader, "batch_sampler", unset) is None:
        return "unbatched"
    given = getattr(loader, "collate_fn", None)
    return "default" if given is default_collate else "list" if given is list else None
