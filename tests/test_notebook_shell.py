"""A notebook session in a real IPython shell, per framework: a training call failing mid-epoch
(Ctrl-C from a callback in Keras and HF, an error in Lightning's training step) with the exception
kept by IPython, the same call again, an evaluation, the objects kept in ``Out``, ``%reset -f``
and two sessions' fits interleaved across cells; and Lightning's ``ddp_notebook`` (two CPU ranks
forked from the shell at every call) failing, fitted again and validated
(``notebook_shell_runner.py``, a process each).

The other notebook tests keep the exception by hand (``sys.last_traceback``); here IPython keeps
it, with its traceback machinery and output history, as it does in Jupyter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("IPython")
pytest.importorskip("torch")

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
RUNNER = TESTS / "notebook_shell_runner.py"
NEEDS = {"lightning": ["lightning"], "keras": ["keras"], "hf": ["transformers"], "ddp_notebook": ["lightning"]}


@pytest.mark.parametrize("framework", list(NEEDS))
def test_a_notebook_session_in_a_real_ipython_shell(tmp_path, framework):
    if framework == "ddp_notebook" and not hasattr(os, "fork"):
        pytest.skip("ddp_notebook forks its ranks: POSIX only")
    for module in NEEDS[framework]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the {framework} notebook session needs it")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(RUNNER), framework, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results[framework] == "ok", results[framework] + "\n" + done.stdout[-3000:]
