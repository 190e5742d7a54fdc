"""`import greencallbacks` must stay light: no framework, no pynvml.

How long it takes is a figure for benchmarks/startup.py, not a pass/fail test: a wall-clock
limit fails on a loaded machine for reasons that are not the package's."""

import json
import subprocess
import sys

HEAVY = ["torch", "lightning", "pytorch_lightning", "keras", "tensorflow", "transformers", "pynvml", "jax", "pandas", "numpy"]


def run_python(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out


def test_import_pulls_in_no_framework_and_no_pynvml():
    code = (
        "import json, sys, greencallbacks, greencallbacks.carbon, greencallbacks.tracker, greencallbacks.sensors;"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = run_python(code)
    assert json.loads(out.stdout) == []


def test_lazy_attributes_resolve():
    import greencallbacks

    assert greencallbacks.Tracker.__name__ == "Tracker"
    assert "energy_kwh" in greencallbacks.METRIC_STEMS
