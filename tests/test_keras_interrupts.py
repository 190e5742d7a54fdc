"""Ctrl-C at every line of the Keras callback's hooks, in a real fit: the ledger stays exact and
the next ``fit`` in the process runs.

A real SIGINT (``os.kill``) is sent from a trace function at the N-th line the callback's hooks run,
for every N of a small fit (two training batches, a validation batch), then ``evaluate`` and
``predict`` - as a notebook's Ctrl-C lands there by chance. Keras has no exception hook: the
callback's watch writes the interrupted call up. After each interrupt: no meter thread left, the
run's records and summary agree (each record its power times its duration, no seq twice), and the
next ``fit`` with the same callback runs and measures exactly. A Ctrl-C inside ``on_test_end``,
after its phase was popped, left the run open with its meter running; inside ``with lock:`` it
left the lock acquired, and the next ``fit`` waited for ever (the subprocess is then stopped by
``faulthandler``, with the stacks, instead of the test's timeout).

This file is also the script run in Keras's own process (``python test_keras_interrupts.py``):
Keras fixes its backend at first import, so the test itself never imports Keras.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if __name__ != "__main__":
    from keras_runs import run_keras

    pytestmark = pytest.mark.slow

# The hooks Keras calls, and the part of on_epoch_begin after the carbon-aware pause
HOOK_PREFIXES = ("on_", "_begin_epoch")
HANG_S = 120  # one interrupted call and the fit after it take a second or two; a hang, for ever


def run_script(tmp_path: Path, scenario: str) -> dict:
    return run_keras("torch", tmp_path, str(Path(__file__).resolve()), scenario, str(tmp_path),
                     purpose="the Keras Ctrl-C scenarios", timeout=900)


def test_a_ctrl_c_at_any_line_of_the_fit_hooks_keeps_the_ledger_and_the_next_fit_runs(tmp_path):
    results = run_script(tmp_path, "fit")
    assert results["lines"] > 100 and results["missed"] < 5, results  # the sweep reached the hooks
    assert results["failures"] == [], results["failures"][:5]


def test_a_ctrl_c_at_any_line_of_the_evaluate_and_predict_hooks_keeps_the_ledger(tmp_path):
    results = run_script(tmp_path, "inference")
    assert results["lines"] > 30 and results["missed"] < 5, results
    assert results["failures"] == [], results["failures"][:5]


def test_a_ctrl_c_during_a_carbon_aware_pause_ends_it_at_once(tmp_path):
    """The pause before an epoch can wait for hours: it is left outside the hooks' hold of Ctrl-C."""
    results = run_script(tmp_path, "pause")
    assert results["failures"] == [], results["failures"]
    assert results["sleeps_after_ctrl_c"] == 0, results


# ------------------------------------------------------------------------- the script, in its process
def _script(scenario: str, out: Path) -> None:  # noqa: C901 - one scenario runner, read top to bottom
    import faulthandler
    import json
    import os
    import signal
    import time
    import traceback

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # for flow_invariants
    import keras
    import numpy as np

    from flow_invariants import check_run, meter_threads
    from greencallbacks import watch
    from greencallbacks.carbon_aware import CarbonAwarePause
    from greencallbacks.keras import EnergyCallback
    from greencallbacks.keras import _callback as callback_module
    from tests.fakes.scripted import ScriptedSensor

    watch.POLL_S = 0.02  # each interrupted call is written up by the watch: ~200 of them here
    power_w = 50.0
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8), dtype=np.float32), rng.random((64, 1), dtype=np.float32)

    class CtrlCAtLine:
        """Sends SIGINT at the ``nth`` line run in the callback's hooks (``nth`` < 0: only counts);
        their own lines, not their helpers' (held whole with them), to keep the sweep short."""

        def __init__(self, nth: int) -> None:
            self.nth, self.lines, self.where = nth, 0, None

        def calls(self, frame, event, arg):
            return self.line if frame.f_code.co_filename == callback_module.__file__ else None

        def line(self, frame, event, arg):
            if event == "line" and frame.f_code.co_name.startswith(HOOK_PREFIXES):
                self.lines += 1
                if self.lines == self.nth:
                    self.where = f"{frame.f_code.co_name}:{frame.f_lineno}"
                    os.kill(os.getpid(), signal.SIGINT)
            return self.line

    def model() -> keras.Model:
        m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss="mse")
        return m

    def new_callback(directory: Path, **kwargs) -> EnergyCallback:
        return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, power_w)], intensity=300.0,
                              output_dir=directory, **kwargs)

    def interrupted(call, ctrl_c: CtrlCAtLine | None) -> bool:
        try:
            if ctrl_c is not None:
                sys.settrace(ctrl_c.calls)
            call()
        except KeyboardInterrupt:
            return True
        finally:
            sys.settrace(None)
        return False

    def fit(m, callback, epochs: int = 2):
        # 48 samples in 2 training batches, 16 in one validation batch
        m.fit(x, y, batch_size=32, epochs=epochs, validation_split=0.25, verbose=0, callbacks=[callback])

    def calls_of(scenario: str):
        if scenario == "fit":
            return lambda m, cb: fit(m, cb)
        # evaluate then predict, each its own outermost call, after one fit (counted by the probe too)
        return lambda m, cb: (m.evaluate(x, y, batch_size=32, verbose=0, callbacks=[cb]),
                              m.predict(x, batch_size=32, verbose=0, callbacks=[cb]))

    def sweep(scenario: str) -> dict:
        run_calls = calls_of(scenario)
        m, cb = model(), new_callback(out / "warm")
        fit(m, cb, epochs=1)  # a process's first fit runs lines of its own (finding its sensors)
        probe = CtrlCAtLine(-1)
        m, cb = model(), new_callback(out / "probe")
        if scenario == "inference":
            fit(m, cb, epochs=1)
        interrupted(lambda: run_calls(m, cb), probe)
        failures, missed = [], 0
        for nth in range(1, probe.lines + 1):
            faulthandler.dump_traceback_later(HANG_S, exit=True)
            directory = out / str(nth)
            m, cb = model(), new_callback(directory)
            if scenario == "inference":
                fit(m, cb, epochs=1)
            ctrl_c = CtrlCAtLine(nth)
            context = f"Ctrl-C at line {nth} of {probe.lines} ({{}})"
            try:
                was_interrupted = interrupted(lambda: run_calls(m, cb), ctrl_c)
                if ctrl_c.where is None:  # this call ran fewer lines than the probe (a loop over models alive)
                    missed += 1
                    continue
                context = context.format(ctrl_c.where)
                assert was_interrupted, "the Ctrl-C did not reach the call"
                assert not meter_threads(), "a meter thread left running"
                assert not cb.session.running, "the run left open"
                started = cb.tracker._writer is not None  # not when the Ctrl-C came before the run started
                if started:
                    check_run(cb.tracker.run_id, [directory], power_w=power_w, context=context)
                first = cb.tracker.run_id
                fit(m, cb)  # the same callback: a new run (waited for ever on a lock left acquired)
                assert not meter_threads(), "a meter thread left running after the next fit"
                check_run(cb.tracker.run_id, [directory], power_w=power_w, context=context + ", the next fit")
                assert cb.tracker.run_id != first or not started, "the next fit went on in the interrupted run"
                records = [r for r in check_run(cb.tracker.run_id, [directory]) if r.phase == "train"]
                assert [(r.epoch, r.samples, r.partial) for r in records] == [(0, 48, False), (1, 48, False)], records
            except Exception:  # noqa: BLE001 - collected, reported together
                failures.append(context + ": " + traceback.format_exc(limit=3)[-1500:])
                if len(failures) == 5:  # a stuck write-up makes each later one wait: enough to tell
                    break
        # Still armed: the process's exit waited for ever too (on the write-up stuck on a lock).
        return {"lines": probe.lines, "missed": missed, "failures": failures}

    def pause() -> dict:
        """Ctrl-C inside the pause's first sleep: the KeyboardInterrupt must end it there."""
        sleeps, now = [], [1.7e9]

        def sleep(seconds: float) -> None:  # a fake clock's: held to its end, the pause took 3600 of them
            sleeps.append(seconds)
            now[0] += seconds
            if len(sleeps) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # raised here, as a real sleep is woken by it

        waits = CarbonAwarePause(threshold_g_per_kwh=100.0, max_delay_s=3600.0, check_every_s=1.0, sleep=sleep,
                                 clock=lambda: now[0])
        m, cb = model(), new_callback(out / "pause", carbon_aware=waits)
        failures = []
        if not interrupted(lambda: fit(m, cb), None):
            failures.append("the Ctrl-C did not reach fit")
        assert not meter_threads()
        records = check_run(cb.tracker.run_id, [out / "pause"], power_w=power_w)
        if [(r.phase, r.epoch, r.partial) for r in records if r.phase == "train"] != [("train", 0, False)]:
            failures.append(f"records {records}")
        return {"failures": failures, "sleeps_after_ctrl_c": len(sleeps) - 1}

    results = pause() if scenario == "pause" else sweep(scenario)
    (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _script(sys.argv[1], Path(sys.argv[2]))
