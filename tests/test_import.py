"""`import greencallbacks` must stay light: no framework, no pynvml, well under 0.3 s."""

import json
import subprocess
import sys

HEAVY = ["torch", "lightning", "pytorch_lightning", "keras", "tensorflow", "transformers", "pynvml", "jax", "pandas", "numpy"]


def run_python(code):
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    return out


def test_import_pulls_in_no_framework_and_no_pynvml():
    code = (
        "import json, sys, greencallbacks, greencallbacks.carbon, greencallbacks.tracker, greencallbacks.sensors;"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = run_python(code)
    assert json.loads(out.stdout) == []


def test_import_time_is_well_under_a_third_of_a_second():
    out = run_python("import greencallbacks")
    # -X importtime writes 'cumulative' microseconds per module to stderr; take the package's line.
    line = next(l for l in out.stderr.splitlines() if l.rstrip().endswith("| greencallbacks"))
    cumulative_us = int(line.split("|")[1])
    assert cumulative_us < 100_000, line


def test_lazy_attributes_resolve():
    import greencallbacks

    assert greencallbacks.Tracker.__name__ == "Tracker"
    assert "energy_kwh" in greencallbacks.METRIC_STEMS
