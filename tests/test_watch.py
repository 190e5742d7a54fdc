"""The watch's test that a framework call has left the stack, against a thread that keeps running."""

from __future__ import annotations

import subprocess
import sys
import threading

from greencallbacks import watch


def _suspended_generator_frame():
    def numbers():
        yield sys._getframe()

    iterator = numbers()
    return next(iterator), iterator  # keep the generator alive: its frame is suspended, f_back None


def test_a_walk_that_ends_at_a_yielding_generator_is_not_proof_the_call_ended():
    # What the watch thread sees when the training thread's top frame (a data iterator) yields
    # while it walks: the chain stops at the generator and the call below it is not met.
    me = sys._getframe()
    frame, _keep = _suspended_generator_frame()
    assert frame.f_back is None and not watch.on_stack(me, frame)
    assert not watch.left_stack(me, frame)
    assert not watch.left_stack(me, sys._getframe())  # on the stack
    assert watch.left_stack(object(), sys._getframe())  # walked to the bottom: surely gone
    assert watch.left_stack(me, None)  # the thread has ended


def test_a_call_in_progress_under_a_busy_generator_is_never_taken_for_ended():
    """A thread iterating a generator inside a watched call, looked at from this thread 100 000 times (the old walk misfired about once in 60 000)."""
    started, stop, seen = threading.Event(), threading.Event(), {}

    def numbers():
        while True:
            yield sum(range(50))

    def training():
        seen["frame"], seen["thread"] = sys._getframe(), threading.get_ident()
        started.set()
        iterator = numbers()
        while not stop.is_set():
            next(iterator)

    thread = threading.Thread(target=training)
    thread.start()
    started.wait()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the walk races the yields
    try:
        ended = sum(watch.left_stack(seen["frame"], sys._current_frames().get(seen["thread"])) for _ in range(100_000))
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join()
    assert ended == 0


def test_a_call_in_progress_under_frames_that_return_mid_walk_is_never_taken_for_ended():
    """A frame that returns while the walk is on it loses its f_back too: only a walk that reaches
    the thread's own bottom frame proves the watched call has ended."""
    started, stop, seen = threading.Event(), threading.Event(), {}

    def step():
        return sum(range(50))

    def training():
        seen["frame"], seen["thread"] = sys._getframe(), threading.get_ident()
        seen["bottom"] = watch._bottom(seen["frame"])
        started.set()
        while not stop.is_set():
            step()

    thread = threading.Thread(target=training)
    thread.start()
    started.wait()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ended = sum(
            watch.left_stack(seen["frame"], sys._current_frames().get(seen["thread"]), seen["bottom"])
            for _ in range(20_000)
        )
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join()
    assert ended == 0
    gone = sys._current_frames().get(seen["thread"])
    assert gone is None or watch.left_stack(seen["frame"], gone, seen["bottom"])


def test_a_write_up_the_watch_thread_has_begun_finishes_before_the_interpreter_exits(tmp_path):
    # The watch thread is a daemon: once the exit handlers have run, the interpreter stops it
    # wherever it is. A call that raised just before the exit (an uncaught exception in a script)
    # may be half written up by then (records written, summary not), unless exit waits for it.
    done = tmp_path / "done"
    script = f"""
import sys, threading, time
from greencallbacks import watch

began = threading.Event()

def write_up():
    began.set()
    time.sleep(0.3)  # a write-up in progress when the main thread reaches the exit
    open({str(done)!r}, "w").close()

def call():
    watch.watch(sys._getframe(), write_up)

call()  # returns: the watch thread notices within POLL_S and begins the write-up
began.wait(10)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert done.exists()


def test_a_walk_that_raises_leaves_the_watch_thread_watching(monkeypatch):
    """A walk racing the other thread raised once (AttributeError in a long Keras run): the
    thread ended, and no call was written up until the next watch. It now walks again next poll."""
    real, failures = watch.left_stack, [AttributeError("'str' object has no attribute 'f_back'")]

    def flaky(*args):
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(watch, "left_stack", flaky)
    gone = threading.Event()

    def call():
        watch.watch(sys._getframe(), gone.set)

    call()  # returns at once: the first walk raises, a later one finds the call ended
    assert gone.wait(50 * watch.POLL_S)
    assert not failures
