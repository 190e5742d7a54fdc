"""`import greencallbacks` must stay light: no framework, no pynvml.

How long it takes is a figure for benchmarks/startup.py, not a pass/fail test: a wall-clock
limit fails on a loaded machine for reasons that are not the package's."""

import json
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("module, framework, install", [
    ("greencallbacks.lightning", "lightning", "pip install 'greencallbacks[lightning]'"),
    ("greencallbacks.lightning.pl", "pytorch_lightning", "pip install pytorch-lightning"),
    ("greencallbacks.keras", "keras", "pip install 'greencallbacks[keras]'"),
    ("greencallbacks.hf", "transformers", "pip install 'greencallbacks[hf]'"),
])
def test_an_adapter_without_its_framework_says_what_installs_it(module, framework, install):
    code = (f"import importlib, sys; sys.modules[{framework!r}] = None; "  # as if it were not installed
            f"importlib.import_module({module!r}).EnergyCallback")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last == f"ModuleNotFoundError: {module} needs {framework}, which is not installed: {install}"


def test_what_the_extra_would_not_fix_is_raised_as_it_was():
    """Keras on the torch backend without torch: installing the keras extra would not help."""
    from greencallbacks import extras

    backend = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert extras.missing(backend, "greencallbacks.keras", ("keras",), "pip install keras") is backend
    broken = ImportError("cannot import name 'Callback' from 'keras'", name="keras")  # installed, but not as expected
    assert extras.missing(broken, "greencallbacks.keras", ("keras",), "pip install keras") is broken
