"""The adapters' promise: measuring never breaks training."""

from __future__ import annotations

import functools
from typing import Any, Callable

from greencallbacks.meter import warn


def never_raises(hook: Callable) -> Callable:
    """Wrap a callback hook so that a failure warns once per callback and training goes on.

    Bad configuration is refused in constructors, before training; anything that still goes
    wrong inside a hook costs at most this run's energy records, never the training itself.
    """

    @functools.wraps(hook)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - measuring must never break training
            hook_failed(self, hook.__name__, error)
            return None

    return guarded


_NOT_OURS = "_greencallbacks_not_ours"


def not_ours(error: BaseException) -> BaseException:
    """Mark an exception raised into a hook from outside, to pass through ``never_raises``: a
    signal handler's (a job's time limit) lands where the training thread waits, and during a
    carbon-aware pause that is inside our hook. Swallowed, it let training go on unmeasured."""
    try:
        setattr(error, _NOT_OURS, True)
    except (AttributeError, TypeError):  # an exception type without attributes of its own
        pass
    return error


def hook_failed(callback: Any, hook_name: str, error: Exception) -> None:
    """What a guarded hook does with its failure: warn once per callback.

    The training loop's per-batch hooks call it from their own ``try``/``except`` instead of
    being wrapped by ``never_raises``: they run at every step, where each Python frame on the
    way costs several microseconds once the step's own work has evicted the caches.
    """
    if getattr(error, _NOT_OURS, False):
        raise error  # the user's, raised into our hook (see `not_ours`): training must see it
    if not getattr(callback, "_greencallbacks_failed", False):
        callback._greencallbacks_failed = True
        warn(
            f"greencallbacks: {type(callback).__name__}.{hook_name} failed ({error!r}); training "
            "continues, but this run's energy records may be incomplete."
        )
