"""Notice that a framework call has ended without its end hook, from a background thread.

Keras and the HF Trainer give callbacks no exception hook: when ``fit`` / ``train`` raises (an
error, Ctrl-C in a notebook) the callback is simply never called again, and the exception may
stay referenced for as long as the notebook keeps ``sys.last_traceback``. Instead of relying on
garbage collection or a private seam of each version, the adapter registers the frame of the
framework call it is inside; a daemon thread looks at that thread's stack (``sys._current_frames``,
identity checks only, never the frame's locals) every ``POLL_S`` and calls ``on_gone`` once the
frame has left it. The end hook of a call that finishes normally cancels the watch first. While
the call runs, ``on_poll`` (if given) is called at each look: Keras' batch hooks may run off the
training thread or not at all, so its heartbeat (``Tracker.heartbeat``) is asked from here.

The cost on the training thread is the GIL for a few microseconds, ``1 / POLL_S`` times a second.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import threading
import time
from types import FrameType
from typing import Callable

POLL_S = 0.2  # the partial records and summary are on disk within ~this after the call ends


class Watch:
    def __init__(self, frame: FrameType, thread_id: int, on_gone: Callable[[], None],
                 on_poll: Callable[[], None] | None = None) -> None:
        self.frame: FrameType | None = frame
        self.on_poll = on_poll
        self.thread_id = thread_id
        # The thread's outermost frame (its script, notebook kernel or thread bootstrap): a walk
        # from the top that reaches it without meeting `frame` proves the call has ended.
        self.bottom = _bottom(frame)
        self._on_gone: Callable[[], None] | None = on_gone
        self._done = False  # fired (and finished) or cancelled
        self._firing = False
        # Reentrant: a garbage-collection finalizer may fire the watch while it is firing.
        self._lock = threading.RLock()

    def cancel(self) -> None:
        with self._lock:
            self._on_gone = self.on_poll = None
            self.frame = None  # frames hold the call's locals (model, data): let them go
            if not self._firing:  # on_gone cancelling its own watch: done when it returns
                self._done = True

    def fire(self) -> None:
        """Run ``on_gone`` now if it has not run (idempotent; safe from any thread, waits for a run in progress)."""
        with self._lock:
            on_gone, self._on_gone, self.frame, self.on_poll = self._on_gone, None, None, None
            self._firing = True
            try:
                if on_gone is not None:
                    on_gone()
            finally:
                self._firing, self._done = False, True

    @property
    def active(self) -> bool:
        return not self._done

    def ended(self) -> bool:
        """Has the watched call left the stack? Asked on the thread that made the call: exact at
        once, where the watch thread notices within ``POLL_S``."""
        return not on_stack(self.frame, sys._getframe(1))


_watches: list[Watch] = []
_lock = threading.Lock()
_wake = threading.Condition(_lock)
_thread: threading.Thread | None = None


def watch(frame: FrameType, on_gone: Callable[[], None], on_poll: Callable[[], None] | None = None) -> Watch:
    """Call ``on_gone`` (from a background thread) once ``frame`` is no longer on the current thread's
    stack, and ``on_poll`` every ``POLL_S`` until then."""
    global _thread
    handle = Watch(frame, threading.get_ident(), on_gone, on_poll)
    with _lock:
        _watches.append(handle)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="greencallbacks-watch", daemon=True)
            _thread.start()
        _wake.notify()
    return handle


def _forget_in_child() -> None:
    """A forked child (a user's ``os.fork`` in a callback) owns none of its parent's calls. Left
    watched, an exit of the child through the interpreter (``sys.exit``) fired them at its exit:
    it wrote the parent's open phase as a failed call's partial record into the parent's records
    (a records file then out of step with its summary, which ``report`` refused). The locks are
    new ones: the parent's watch thread may have held them at the fork, and it does not run here."""
    global _lock, _wake, _thread
    _watches.clear()
    _lock = threading.Lock()
    _wake = threading.Condition(_lock)
    _thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _finish_at_exit() -> None:
    """Finish every write-up before the interpreter stops the (daemon) watch thread.

    Once the exit handlers have run, the interpreter halts daemon threads wherever they are: a
    write-up the watch thread has begun (a script's uncaught exception) would be left half done,
    its records written and its summary not. ``fire`` waits for one in progress and runs one not
    yet begun here, on the exiting thread. The adapters' own exit handlers cannot wait for it:
    the write-up unregisters them as it begins.
    """
    with _lock:
        pending = list(_watches)
    for handle in pending:
        try:
            handle.fire()
        except Exception:  # noqa: BLE001 - the watched call already failed; finish the others
            pass


def calling_frame(predicate: Callable[[FrameType], bool], depth: int = 60) -> FrameType | None:
    """The innermost frame above the caller for which ``predicate`` holds."""
    frame = sys._getframe(1)
    try:
        while frame is not None and depth > 0:
            if predicate(frame):
                return frame
            frame, depth = frame.f_back, depth - 1
        return None
    finally:
        del frame


def settle(timeout_s: float = 5.0) -> bool:
    """Wait until every watched call that has ended has been handled (its records written).

    For code that reads the records right after catching a framework's exception (tests,
    scripts); training never needs it. False if ``timeout_s`` passed first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        stacks = sys._current_frames()
        with _lock:
            ended = [w for w in _watches if w.active and left_stack(w.frame, stacks.get(w.thread_id), w.bottom)]
        del stacks
        if not ended:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def on_stack(target: FrameType | None, top: FrameType | None) -> bool:
    """Is ``target`` ``top`` or one of its callers?"""
    while top is not None:
        if top is target:
            return True
        top = top.f_back
    return False


def _bottom(frame: FrameType) -> FrameType:
    while frame.f_back is not None:
        frame = frame.f_back
    return frame


def left_stack(target: FrameType | None, top: FrameType | None, bottom: FrameType | None = None) -> bool:
    """Has ``target`` surely left the stack whose top frame was ``top``?

    ``top`` comes from ``sys._current_frames()`` of another thread, which keeps running while
    this one walks: a frame there that returns, or a generator that yields (Keras's and HF's data
    iterators), loses its ``f_back`` mid-walk, and the walk ends early, short of a call still in
    progress. Such a walk proves nothing; only one that reaches the thread's ``bottom`` frame
    without meeting ``target`` does (without ``bottom``: one that ends at a non-generator frame).
    """
    last = None
    while top is not None:
        if top is target:
            return False
        last, top = top, top.f_back
    if last is None:
        return True  # the thread has no frames left: it ended
    if bottom is not None:
        return last is bottom
    return not last.f_code.co_flags & _GENERATOR_FLAGS


_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _run() -> None:
    while True:
        with _lock:
            _watches[:] = [w for w in _watches if w.active]
            while not _watches:
                _wake.wait()
                _watches[:] = [w for w in _watches if w.active]
            current = list(_watches)
        stacks = sys._current_frames()
        for handle in current:
            frame = handle.frame
            try:
                left = frame is not None and left_stack(frame, stacks.get(handle.thread_id), handle.bottom)
            except Exception:  # noqa: BLE001 - a walk racing the other thread (seen once in a long
                left = False   # Keras run) proves nothing; the next poll walks again, and the thread lives on
            if left:
                try:
                    handle.fire()
                except Exception:  # noqa: BLE001 - the watched call already failed; keep watching the others
                    pass
            elif frame is not None and (poll := handle.on_poll) is not None:  # (cancelled meanwhile: None)
                try:
                    poll()
                except Exception:  # noqa: BLE001 - a heartbeat that failed is written at the next look
                    pass
        # Nothing of a watched call may stay referenced while this thread waits: a cancelled
        # watch's frame would keep that call's Trainer, model and data alive until the next watch.
        stacks = current = handle = frame = poll = None
        with _lock:
            _wake.wait(POLL_S)
