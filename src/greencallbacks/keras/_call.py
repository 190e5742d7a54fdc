"""One outermost Keras call (``_Call``: a ``fit``, ``evaluate`` or ``predict`` that uses the callback)
and its end where it raised (``_abandon``).

Keras gives callbacks no exception hook: ``greencallbacks.watch`` sees the call's frame leave the
stack without the end hook, and ``_abandon`` then writes the phases it left open as partial, from
the watch thread (or at exit). While the call runs, the watch asks for its run's heartbeat.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

import keras

from greencallbacks import watch
from greencallbacks.keras._progress import _Progress
from greencallbacks.keras._state import _Run


class _Call:
    """One outermost Keras call (``fit``, ``evaluate`` or ``predict``) that uses the callback."""

    def __init__(self, kind: str, callback_list: keras.callbacks.CallbackList | None, frame) -> None:
        self.kind = kind
        self._list = weakref.ref(callback_list) if callback_list is not None else None
        self.active = True
        self.run: _Run | None = None  # set when measuring starts
        # Inside Keras's own fit / evaluate / predict: its loops reset the metrics when an epoch or
        # evaluation begins, so the loss tracker counts its samples. A loop of the user's that
        # drives a CallbackList by hand around train_on_batch / test_on_batch (which reset the
        # metrics every batch in Keras 3.15, never in 3.3) gives no such count.
        self.in_keras_loop = frame is not None
        self.model: Any = None  # the fit's (see EnergyCallback._point_back)
        self.resets_loss_tracker = True  # Keras resets the model's loss tracker with its metrics (see _enter)
        # The most steps an epoch of this fit ran to its data's end where Keras plans none (data of
        # unknown length): a later epoch that ran fewer ran out early (see EnergyCallback._ended_early).
        self.whole_epoch_steps = 0
        self.progress = _Progress()
        # Fires `_abandon` once the call's frame has left the stack without the end hook (it
        # raised), or at exit; `close` cancels it when the call ends normally.
        # Asks for the run's heartbeat while the call runs: Keras' batch hooks run off the training
        # thread, or are not dispatched at all.
        self.watch = (watch.watch(frame, functools.partial(_abandon, self), functools.partial(_heartbeat, self))
                      if frame is not None else None)
        self._at_exit = weakref.finalize(self, _abandon, self)  # no frame found, or the process exits first

    @property
    def callback_list(self) -> keras.callbacks.CallbackList | None:
        return self._list() if self._list is not None else None

    def running(self) -> bool:
        """Is the call still in progress? (On the calling thread: synchronous, unlike the watch.)"""
        if not self.active:
            return False
        if self.watch is None:
            return True  # no frame to look at: trust the begin/end pairs
        return not self.watch.ended()

    def abandon(self) -> None:
        """Write what an ended call measured (at most once, whoever notices first)."""
        if self.watch is not None:
            self.watch.fire()
        _abandon(self)

    def close(self) -> None:
        self.active = False
        if self.watch is not None:
            self.watch.cancel()
        self._at_exit.detach()


_ABANDON_LOCK = threading.RLock()


def _heartbeat(call: _Call) -> None:
    """The open phases of the call's run beside its records, once a minute (``Tracker.heartbeat``:
    from the watch thread, never waiting for a boundary on the training thread)."""
    run = call.run
    if run is not None:
        run.session.tracker.heartbeat()


def _abandon(call: _Call) -> None:
    """The call ended without its end hook (it raised): write the unfinished phases as partial.

    Runs from the watch thread within ``watch.POLL_S`` of the call's end, when the callback
    notices first (its next call), or at interpreter exit, whichever is first; once. Holds no
    reference to the callback, so the callback can be collected.
    """
    if call.run is not None and call.run.session.tracker.in_a_forked_child:
        return  # a forked child's exit (it inherits this finalizer): the call, and its records, are its parent's
    with _ABANDON_LOCK:
        if not call.active:
            return
        call.active = False
        call._at_exit.detach()
        if call.run is not None:
            # The open training and test phases were marked uncounted when they began (their
            # count comes from the loss tracker at their end); the step and predict's count here.
            call.progress.label(call.run.session.tracker)
            call.run.session.stop(failed=True)  # local only: no collectives when failing
            if call.progress.training:
                call.run.failed_in_epoch = call.progress.epoch
            if call.run.fitted:
                call.run.save_state()
