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
            if not getattr(self, "_greencallbacks_failed", False):
                self._greencallbacks_failed = True
                warn(
                    f"greencallbacks: {type(self).__name__}.{hook.__name__} failed ({error!r}); training "
                    "continues, but this run's energy records may be incomplete."
                )
            return None

    return guarded
