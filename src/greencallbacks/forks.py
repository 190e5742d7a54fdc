"""Which process a run belongs to: a process forked from the one that started it does nothing to it.

``pid`` is this process's id, kept by a fork hook rather than asked of the kernel (a system call)
at every step's heartbeat; the tracker notes it when a run starts, and ``not_in_a_forked_child``
makes its methods do nothing in a fork of that process.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from greencallbacks.tracker import Tracker

# Read as ``forks.pid``: a name imported from here would keep the parent's id in a fork.
pid = os.getpid()


def _note_fork() -> None:
    global pid
    pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def not_in_a_forked_child(method: Callable) -> Callable:
    """Do nothing in a process forked from the one that started the run (a user's ``os.fork``
    inside a phase): the child's copy of the run is its parent's, and so are its records. A child
    that left through the interpreter (``sys.exit``) ended the phase and the run there (a
    ``phase`` block's and a ``with`` block's exit, Lightning's ``on_exception``): it wrote the
    parent's open phase as a partial record into the parent's records file, which no longer summed
    to its summary, and ``report`` refused it."""

    @functools.wraps(method)
    def guarded(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        if self.in_a_forked_child:
            return None
        return method(self, *args, **kwargs)
    return guarded
