"""A loop's samples from its data set's length, and the rows per sample of the Trainer's collator."""

from __future__ import annotations

from typing import Any

import transformers
from transformers import Trainer

from greencallbacks.samples import BatchCounter


def _samples_run(dataloader) -> int | None:
    """The samples a loop over ``dataloader`` runs, from its data set's length (HF's own
    ``num_samples``), where the batches hold each sample once: torch's ``BatchSampler`` without
    ``drop_last`` (maybe in Accelerate's shard, whose repeats to keep ranks in step this count
    leaves out) over a sequential, random or length-grouped sampler of the whole data set. Else
    None: a subset's sampler, a batch sampler of its own, a stream, or dropped batches make the
    length another number than the samples the model ran."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    dataset = getattr(dataloader, "dataset", None)
    if not _has_length(dataset):
        return None
    batches = getattr(dataloader, "batch_sampler", None)
    batches = getattr(batches, "batch_sampler", batches)  # Accelerate's BatchSamplerShard wraps the loader's own
    if type(batches) is not BatchSampler or batches.drop_last:
        return None
    sampler = batches.sampler
    if not isinstance(sampler, (SequentialSampler, RandomSampler, LengthGroupedSampler)) or len(sampler) != len(dataset):
        return None  # RandomSampler(num_samples=...) draws another number
    return len(dataset)


def _has_length(dataset) -> bool:
    """Whether ``len(dataset)`` answers (as HF's ``has_length``: a torch ``IterableDataset`` raises)."""
    try:
        return dataset is not None and len(dataset) is not None
    except (TypeError, AttributeError, NotImplementedError):
        return False


# TRL's preference collators, and two pairs each takes (DPO's and the reward model's: token ids;
# DPO's vision collator: texts, which its processor tokenizes, and no image).
_PAIR_COLLATORS = {
    "DataCollatorForPreference": lambda: {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]},
    "DataCollatorForVisionPreference": lambda: {"images": [], "prompt": "a", "chosen": "b", "rejected": "c"},
}


def _rows_per_pair(collator: Any) -> int:
    """2 where ``collator`` is a TRL preference collator (DPO's, the reward model's, DPO's vision
    one) that stacks each pair's chosen and rejected sequences into one ``input_ids`` (TRL 1.x):
    counted as rows, 10 pairs were 20 samples, where HF's own count (and ours on several ranks:
    the data set's length) gives 10. Else 1: older TRL's collator of that name keeps chosen and
    rejected apart, a row per pair, so the layout is read from the collator itself, on two pairs of
    one token each. The vision collator's processor may refuse a pair without an image: then 2,
    as that collator stacks them (``* 2  # repeat for chosen and rejected`` in TRL 1.16; until
    2026-12-06 it was left at 1, and a vision DPO pair counted 2)."""
    name = next((kind.__name__ for kind in type(collator).__mro__
                 if kind.__module__.startswith("trl.") and kind.__name__ in _PAIR_COLLATORS), None)
    if name is None:
        return 1
    try:
        # Each call its own examples: the vision collator rewrites them in place.
        batch = collator([_PAIR_COLLATORS[name]() for _ in range(2)])
        return 2 if tuple(batch["input_ids"].shape)[:1] == (4,) else 1
    except Exception:  # noqa: BLE001 - older TRL's keys (rows are pairs), or a processor wanting an image
        return 2 if name == "DataCollatorForVisionPreference" else 1


def _know_collator(counter: BatchCounter, trainer: Trainer | None) -> None:
    """Tell ``count_samples`` what the Trainer's collator makes. ``collate`` None where it packs
    sequences into one row (``DataCollatorWithFlattening``, TRL's ``padding_free``), whose row is
    counted by its sequences, less the pad tokens it appends where it pads the row to a multiple
    (TRL's ``pad_to_multiple_of``: ``pad_token_id``); else ``"rows"``: a batch of one row is one
    sample (a data set of pre-packed rows counts its rows at every batch size)."""
    collator = getattr(trainer, "data_collator", None)
    flattening = getattr(transformers, "DataCollatorWithFlattening", None)
    packs = (flattening is not None and isinstance(collator, flattening)) or getattr(collator, "padding_free", False)
    counter.collate = None if packs else "rows"
    counter.rows_per_sample = _rows_per_pair(collator)
    pads = packs and getattr(collator, "pad_to_multiple_of", None)
    counter.pad_token_id = getattr(collator, "pad_token_id", None) if pads else None
