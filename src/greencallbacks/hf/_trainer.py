"""The Trainer a callback works on: found on the call stack, the attributes shared on it, its devices."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

from transformers import Trainer

from greencallbacks.meter import warn
from greencallbacks.torch_support import device_and_sync

if TYPE_CHECKING:
    from greencallbacks.hf._callback import EnergyCallback


# Attributes set on the Trainer instance: the callbacks its wrappers report to, in attach order,
# and whether an evaluation / prediction loop method was there to wrap.
_OWNERS = "_greencallbacks_energy_callbacks"
_LOOPS_WRAPPED = "_greencallbacks_loops_wrapped"
# The metric names the callbacks merged into the Trainer's loop metrics, which HF's default objective leaves out.
_MERGED = "_greencallbacks_merged_metrics"
# The energy callbacks in the Trainer's handler when HF last replaced them with copies built from a
# checkpoint (`restore_callback_states_from_checkpoint`), whose places the copies hand back.
_REPLACED = "_greencallbacks_replaced_callbacks"


def _owners(trainer) -> list:
    return trainer.__dict__.get(_OWNERS, []) if trainer is not None else []


def _devices_and_sync(args) -> tuple[list[int], Callable[[], None] | None]:
    """The CUDA devices the Trainer trains on, and a function that waits for their work.

    One process on a machine with several GPUs (``python train.py``, no launcher) makes Trainer
    wrap the model in ``nn.DataParallel`` over all ``args.n_gpu`` visible GPUs, while
    ``args.device`` names only the first (cuda:0): every one of them is measured. Distributed
    (torchrun, DDP) processes have ``n_gpu`` 1 each and train on ``args.device`` alone.
    """
    import torch

    device_indices, sync = device_and_sync(args.device)
    n_gpu = getattr(args, "n_gpu", 1)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if device_indices and isinstance(n_gpu, int) and n_gpu > 1 and not distributed:
        # DataParallel's default device_ids: range(torch.cuda.device_count()), which n_gpu is.
        device_indices = list(range(n_gpu))

        def sync() -> None:
            for index in device_indices:
                torch.cuda.synchronize(index)

    return device_indices, sync


def _keep_once(callbacks: list, callback: EnergyCallback) -> None:
    """Leave ``callback`` once in the Trainer's ``callbacks``, where it was added again
    (``Trainer(callbacks=[...])`` then ``add_callback``, or a notebook cell run twice; HF only
    warns): each hook would run twice, beginning every epoch twice (four records for two epochs,
    numbered 0 to 3) and logging every value twice. Called from a hook of its first place: the
    Trainer, iterating this list, then calls the others once each."""
    places = [i for i, cb in enumerate(callbacks) if cb is callback]
    if len(places) > 1:
        callbacks[places[0] + 1:] = [cb for cb in callbacks[places[0] + 1:] if cb is not callback]
        warn("greencallbacks: this EnergyCallback was added to the Trainer more than once; it is kept once "
             "(each of its hooks would have run twice).")


def _frames_from(frame) -> list:
    """``frame`` and its callers, innermost first."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def _whose_hook(loop_frames: list) -> str:
    """Whose end the ``on_evaluate`` / ``on_predict`` being called is, for a loop begun at its first
    ``on_prediction_step`` in ``loop_frames`` (its frame, then its callers): ``"this"`` where the
    Trainer method calling the hook encloses the loop (``evaluate()``; the loop itself in a release
    that runs it inline), or nothing is known; ``"inner"`` where the loop still runs outside that
    method (an ``evaluate()`` inside the loop); else ``"gone"``: the loop returned without its hook."""
    caller = _find_trainer()[1]
    if caller is None or not loop_frames or any(frame is caller for frame in loop_frames):
        return "this"
    outer = caller.f_back
    while outer is not None:
        if outer is loop_frames[0]:
            return "inner"
        outer = outer.f_back
    return "gone"


def _find_trainer(depth: int = 40):
    """The Trainer whose method is on the call stack (hooks are not given it), and that frame."""
    frame = sys._getframe(1)
    while frame is not None and depth > 0:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate, frame
        frame, depth = frame.f_back, depth - 1
    return None, None
