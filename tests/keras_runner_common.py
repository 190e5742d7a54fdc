"""What every Keras runner process (``keras_everyday_runner.py``, ``keras_flow_runner.py``,
``keras_paths_runner.py``) begins with, imported before anything else: the backend named by its
first argument, set before Keras is first imported (Keras fixes it then); the paths to
``tests.fakes`` and ``flow_invariants``; and the one tiny data set every scenario trains on.

    python tests/keras_<name>_runner.py <backend> <out_dir> <scenarios or seeds, comma-separated> ...
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

BACKEND, OUT = sys.argv[1], Path(sys.argv[2])
ITEMS = [item for item in sys.argv[3].split(",") if item]  # the scenarios (or seeds) to run
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for flow_invariants

import keras  # noqa: E402
import numpy as np  # noqa: E402

assert keras.backend.backend() == BACKEND, keras.backend.backend()
KERAS_VERSION = tuple(int(part) for part in keras.__version__.split(".")[:2])  # (3, 15)

POWER_W = 50.0
TRAIN, VAL, BATCH = 100, 30, 32  # 100 samples: 3 full batches and one of 4
rng = np.random.default_rng(0)
X, Y = rng.random((TRAIN, 8), dtype=np.float32), rng.random((TRAIN, 1), dtype=np.float32)
XV, YV = rng.random((VAL, 8), dtype=np.float32), rng.random((VAL, 1), dtype=np.float32)


def run_jobs(jobs: dict[str, Callable[[], None]]) -> None:
    """Run each job; its outcome ("ok", or its failure) goes to ``<out_dir>/results.json``, for the test to fail with."""
    results = {}
    for name, job in jobs.items():
        try:
            job()
            results[name] = "ok"
        except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
            results[name] = traceback.format_exc()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))


def run_scenarios(scenarios: dict[str, Callable[[Path], None]]) -> None:
    """Run the scenarios named on the command line (functions of ``scenarios``, a runner's
    globals), each in a directory of its own under ``<out_dir>``."""
    def job(name: str) -> None:
        out = OUT / name
        out.mkdir(parents=True, exist_ok=True)
        scenarios[name](out)

    run_jobs({name: (lambda name=name: job(name)) for name in ITEMS})
