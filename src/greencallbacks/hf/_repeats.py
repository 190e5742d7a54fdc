"""How many of a rank's last evaluation batch are no repeats (Accelerate's), and that part of the batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from greencallbacks.hf._counts import _samples_run


def _samples_not_repeated(dataloader, rank: int, world_size: int) -> int | None:
    """How many of this rank's samples in the batch now yielded by Accelerate's ``dataloader`` are no
    repeats, where that is its last and HF's count of the loop's samples (``_samples_run``) leaves
    repeats out; None where every sample of the batch counts. Accelerate completes the last batch
    of each rank with samples from the data set's start, and its ``gather_for_metrics`` keeps the
    first ``remainder`` (the data set's length modulo the batch of all ranks) of the ranks' batches
    in rank order: so does this."""
    if getattr(dataloader, "end_of_dataloader", False) is not True:
        return None
    remainder, total = getattr(dataloader, "remainder", -1), getattr(dataloader, "total_batch_size", None)
    if not (isinstance(remainder, int) and isinstance(total, int) and remainder > 0 and total % world_size == 0):
        return None
    if _samples_run(dataloader) is None:
        return None  # the loop counts its batches, repeats and all
    per_rank = total // world_size
    kept = max(0, min(per_rank, remainder - rank * per_rank))
    return kept if kept < per_rank else None


def _first_samples(batch: Any, samples: int, kept: int) -> Any:
    """The first ``kept`` of a batch of ``samples``: a mapping (HF's inputs) whose values are
    tensors or lists of that many rows, mappings of such, or values of no rows (a scalar, a
    string); None for any other batch. Each mapping keeps its type: a ``token_counter`` that reads
    a ``BatchEncoding``'s attributes (``batch.attention_mask``) failed on a plain dict, and the
    whole evaluation said ``tokens_counted: false``."""
    if not isinstance(batch, Mapping):
        return None
    part = _first_rows(batch, samples, kept)
    return None if part is _NOT_CUT else part


_NOT_CUT = object()  # a value whose rows are not the batch's samples


def _first_rows(value: Any, samples: int, kept: int) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value
        return value[:kept] if value.shape[0] == samples else _NOT_CUT
    if isinstance(value, (list, tuple)):  # a collator's per-sample list (ids, texts)
        return value[:kept] if len(value) == samples else _NOT_CUT
    if isinstance(value, Mapping):
        part = {}
        for key, item in value.items():
            part[key] = _first_rows(item, samples, kept)
            if part[key] is _NOT_CUT:
                return _NOT_CUT
        try:
            return type(value)(part)  # a BatchEncoding stays one, as HF's _prepare_input keeps it
        except Exception:  # noqa: BLE001 - a mapping not built from a dict
            return part
    return value  # no rows: a scalar, a string
