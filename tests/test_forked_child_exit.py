"""A child forked inside a training (a user's ``os.fork`` in a callback or a loop of their own) that
leaves through the interpreter (``sys.exit``) writes nothing into its parent's run.

It inherited the parent's exit handlers (the watch's, the Keras call's finalizer, the HF
callback's) and, unwinding the framework's call, Lightning's ``on_exception`` and the ``with``
block of a loop of one's own: each wrote the parent's open phase up as a failed run's partial
record into the parent's records file. The records then summed to more than the summary
(1.991e-5 against 1.970e-5 kWh in a Keras fit), and ``report`` refused the file ("record seq 6 of
run ... again, with other contents"). Each framework runs in a process of its own
(``fork_child_runner.py``): a fork of the test process would run pytest's exit in the child.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greencallbacks.cli import main as cli_main

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork: POSIX only")

ROOT = Path(__file__).resolve().parents[1]
NEEDS = {"core": [], "lightning": ["lightning", "torch"], "keras": ["keras", "torch"], "hf": ["transformers", "torch"]}


@pytest.mark.parametrize("framework", list(NEEDS))
def test_a_forked_child_leaving_through_the_interpreter_writes_nothing_into_the_parents_run(framework, tmp_path,
                                                                                             capsys):
    for module in NEEDS[framework]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the {framework} fork needs it")
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "tests" / "fork_child_runner.py"), framework,
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "energy-records.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    seqs = [record["seq"] for record in records]
    assert len(seqs) == len(set(seqs)), seqs  # the child's record took a seq the parent took too
    assert not any(record["partial"] for record in records), [r for r in records if r["partial"]]
    assert sum(record["energy_kwh"] for record in records) == pytest.approx(summary["energy_kwh"], rel=1e-9)
    assert cli_main(["report", str(tmp_path)]) == 0
    assert "Energy report (1 run" in capsys.readouterr().out
