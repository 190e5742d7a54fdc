"""Keras in a process of its own, for the tests that run it on several backends.

Keras fixes its backend at first import, so each backend's scenarios run in a script of their own
(a runner file, or code given with ``-c``), which writes its outcome to ``results.json`` in the
directory it runs in. A backend that is not installed skips the test, saying which.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Run after a script's own code: the exit handlers (the library's among them), then leave without
# the interpreter's finalization. There TensorFlow and torch, loaded in one process, now and then
# abort once the results are out ("terminate called without an active exception", "terminate called
# after throwing an instance of '2'" with two MirroredStrategy replicas: 2 CI runs, not reproduced
# in 12 reruns). A script that fails raises before this, and exits as it would.
_LEAVE = """
import atexit as _atexit, os as _os, sys as _sys
_atexit._run_exitfuncs()
_sys.stdout.flush(); _sys.stderr.flush()
_os._exit(0)
"""


def _dumping_after(seconds: float) -> str:
    """Code that, ``seconds`` from now, writes every thread's stack to stderr and exits: a process
    that hangs (once in a CI run, a TensorFlow scenario with two MirroredStrategy replicas, at the
    Keras floor; not reproduced in 5 reruns) fails with where it hung, before the test's timeout
    kills it silently."""
    return f"import faulthandler as _faulthandler\n_faulthandler.dump_traceback_later({seconds!r}, exit=True)\n"


def _python_leaving(*command: str, dump_after: float | None = None) -> list[str]:
    """The command line of ``python *command`` (``-c code args`` or ``script args``) that leaves by
    ``_LEAVE``; ``dump_after``: seconds after which a process still running says where it is and exits."""
    dump = _dumping_after(dump_after) if dump_after else ""
    if command[0] == "-c":
        return [sys.executable, "-c", dump + command[1] + _LEAVE, *command[2:]]
    script, *args = command
    # As ``python script`` would: its arguments, and its folder first on the path.
    run = (f"import os, runpy, sys\nsys.argv = {[script, *args]!r}\nsys.path[0] = os.path.dirname({script!r})\n"
           f"runpy.run_path({script!r}, run_name='__main__')\n")
    return [sys.executable, "-c", dump + run + _LEAVE]


def run_keras(backend: str, out: Path, *command: str, purpose: str, timeout: int = 600, hang_retried: bool = False) -> dict:
    """``python <command>`` with ``KERAS_BACKEND=backend`` in ``out``; what it wrote to results.json.
    ``purpose`` completes the skip's reason: "{purpose} need it". ``hang_retried``: a process that
    hangs (its stacks dumped, see ``_dumping_after``) runs once more, its stacks given as a warning;
    for TensorFlow's MirroredStrategy on two logical CPUs, whose runs abort or hang now and then on
    a 2-CPU machine, in TensorFlow. A second hang fails."""
    for module in ("keras", backend):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: {purpose} need it")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    for attempt in range(2 if hang_retried else 1):
        done = subprocess.run(_python_leaving(*command, dump_after=timeout - 30), cwd=out, env=env,
                              capture_output=True, text=True, timeout=timeout)
        hung = done.returncode != 0 and "most recent call first" in done.stderr and "Timeout (" in done.stderr
        if not (hung and hang_retried and attempt == 0):
            break
        warnings.warn(f"{purpose}: the process hung and runs again; where it was:\n{done.stderr[-6000:]}", stacklevel=2)
        for written in Path(out).iterdir():  # what the hung run wrote (its records) is not the rerun's
            shutil.rmtree(written) if written.is_dir() else written.unlink()
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((Path(out) / "results.json").read_text())


def run_keras_code(backend: str, code: str, out: Path, purpose: str, timeout: int = 300) -> object:
    """``python -c code out`` with ``KERAS_BACKEND=backend`` in ``out``; the JSON of its last line of
    output. ``purpose`` completes the skip's reason where the backend is not installed."""
    for module in ("keras", backend):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: {purpose} need it")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(_python_leaving("-c", code, str(out), dump_after=timeout - 30), cwd=out, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def run_on_backends(tmp_path_factory, backends, runner: Path, scenarios, purpose: str, needs_tensorboard: bool = True) -> dict:
    """``runner <backend> <out> <scenario,...>`` on each backend at once (one process each): backend ->
    its results, or the ``pytest.skip`` exception of a backend that is not installed, for its tests
    to raise. ``scenarios``: the same for every backend, or a dict of each backend's. With
    ``needs_tensorboard``, skips all of them without TensorFlow (``keras.callbacks.TensorBoard`` needs it)."""
    if needs_tensorboard and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed: keras.callbacks.TensorBoard needs it")
    # Made here, not in the threads: two threads making pytest's base directory at once made two.
    outs = {backend: tmp_path_factory.mktemp(f"{runner.stem}-{backend}") for backend in backends}

    def backend_results(backend: str):
        out = outs[backend]
        mine = scenarios[backend] if isinstance(scenarios, dict) else scenarios
        try:
            return run_keras(backend, out, str(runner), backend, str(out), ",".join(mine),
                             purpose=f"{purpose} on the {backend} backend")
        except pytest.skip.Exception as skipped:
            return skipped

    with ThreadPoolExecutor(len(backends)) as pool:
        return dict(zip(backends, pool.map(backend_results, backends)))


# A token count for the ``-c`` scripts' models (``token_counter="tokens"``): the labels seen, as a
# metric of Keras's own (source text, pasted into a script after its ``import keras``).
TOKENS_METRIC = '''
class Ones(keras.metrics.Metric):  # the labels seen: a token count named "tokens"
    def __init__(self, name="tokens", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(keras.ops.cast(keras.ops.size(y_true), "float32"))

    def result(self):
        return self.total * 1.0
'''
