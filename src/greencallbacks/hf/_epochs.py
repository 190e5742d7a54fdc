"""Which epoch HF's training loop begins at (0, or where a resume starts) and which it has reached."""

from __future__ import annotations

import inspect
import math

from transformers import Trainer

from greencallbacks.hf._counts import _has_length


def _first_epoch(trainer: Trainer | None, args, state, dataloader) -> tuple[int | None, bool]:
    """The epoch HF's training loop begins at: 0, or on a resume HF's own
    ``global_step // num_update_steps_per_epoch`` (None where that cannot be computed); and whether
    HF skips steps of it first: a resume from a checkpoint inside it, unless ``ignore_data_skip``
    (where the steps per epoch are unknown, maybe)."""
    if not state.global_step:
        return 0, False  # a new training (HF loads a checkpoint's state, its global step, only to resume)
    per_epoch = _update_steps_per_epoch(trainer, args, state, dataloader)
    skips = not getattr(args, "ignore_data_skip", False) and not (per_epoch and state.global_step % per_epoch == 0)
    return (state.global_step // per_epoch if per_epoch else None), skips


def _update_steps_per_epoch(trainer: Trainer | None, args, state, dataloader) -> int | None:
    """HF's ``num_update_steps_per_epoch``, from which a resume computes its first epoch: the
    Trainer's ``set_initial_training_values`` (a subclass's override included; HF's rounds the
    windows down in the first releases that have it, up in later ones), else as 4.47 and 4.48
    compute it inline in the training loop. None where it fails (an override that wants other
    arguments)."""
    if hasattr(Trainer, "set_initial_training_values"):
        if trainer is None:
            return None
        method = trainer.set_initial_training_values
        try:
            arguments = [args, dataloader]
            if "total_train_batch_size" in inspect.signature(method).parameters:  # transformers < 5
                # (it counts the samples HF logs, not the steps), as the training loop computes it
                total = getattr(trainer, "get_total_train_batch_size", None)
                arguments.append(total(args) if total is not None else getattr(trainer, "_train_batch_size", 1)
                                 * args.gradient_accumulation_steps * args.world_size)
            return int(method(*arguments)[1])
        except Exception:  # noqa: BLE001 - the epochs are then numbered from state.epoch
            return None
    if dataloader is None:
        return None
    if not _has_length(dataloader):
        return state.max_steps  # HF's loop, over a data set without a length
    return max(len(dataloader) // args.gradient_accumulation_steps, 1)


def _epoch_reached(state) -> int | None:
    """The last epoch the Trainer began, from its ``state.epoch`` (progress: 2.0 after two whole
    epochs, 1.5 halfway through the second); None before any."""
    return math.ceil(state.epoch) - 1 if state.epoch else None
