"""The callback's hooks held whole against Ctrl-C (``_whole``): a ``KeyboardInterrupt`` that lands
inside one is raised as it returns, at epoch and loop boundaries only.
"""

from __future__ import annotations

import functools
from typing import Any

from greencallbacks import interrupts


def _whole(hook):
    """The hook's bookkeeping (phases pushed or popped, the tracker's boundary, the locks it takes)
    done whole against Ctrl-C: a ``KeyboardInterrupt`` landing inside is raised as the hook returns
    (``interrupts.held``: at epoch and loop boundaries only, never at a batch). Landing between a
    phase popped here and its end, it left the run open with no phase to write up; inside ``with
    lock:``, it could leave the lock acquired, and the write-up and the next ``fit`` waited on it."""

    @functools.wraps(hook)
    def whole(self, *args: Any, **kwargs: Any) -> Any:
        with interrupts.held():
            return hook(self, *args, **kwargs)

    return whole
