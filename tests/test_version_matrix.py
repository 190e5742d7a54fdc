"""scripts/test_versions.py, the old-version CI driver: its counting and its refusals (no venv built)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("test_versions_driver", REPO / "scripts" / "test_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_counts_read_pytest_junit_with_errors_as_failures(driver, tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="1" failures="2" skipped="3" tests="10">'
        "</testsuite></testsuites>"
    )
    assert driver.counts(junit) == {"passed": 4, "failed": 3, "skipped": 3}


def test_a_venv_without_the_pinned_version_is_reported(driver):
    spec = {"requirements": ["keras==3.3.3", "jax[cpu]==0.4.26", "tensorboard"]}
    assert driver.pinned(spec, {"keras": "3.3.3", "jax": "0.4.26"}) == []
    assert driver.pinned(spec, {"keras": "3.15.1"}) == ["keras==3.3.3 (found 3.15.1)", "jax[cpu]==0.4.26 (found None)"]


def test_every_floor_in_the_matrix_is_the_floor_pyproject_declares(driver):
    """The README table and pyproject.toml say what CI tests: the pins here must be those floors."""
    declared = dict(re.findall(r'"(transformers|keras|lightning|accelerate|torch)>=([0-9.]+)"', (REPO / "pyproject.toml").read_text()))
    floors = [spec for spec in driver.MATRIX.values() if not spec.get("middle")]  # a middle release is no floor
    pins = {r.split("==")[0]: r.split("==")[1] for spec in floors for r in spec["requirements"] if "==" in r}
    for name, floor in declared.items():
        assert tuple(map(int, pins[name].split(".")))[: len(floor.split("."))] == tuple(map(int, floor.split("."))), name


def test_an_unknown_name_is_refused_with_the_valid_ones(driver, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["test_versions.py", "--only", "tensorflow"])
    assert driver.main() == 2
    err = capsys.readouterr().err
    assert "tensorflow" in err and "transformers, lightning, keras" in err


def test_at_pins_the_framework_and_frees_only_its_floor_companions(driver):
    """--at runs the floor's tests at another release: accelerate and TensorFlow float with it."""
    assert driver.at_version("lightning", "2.4.0")["requirements"][:3] == [
        "lightning==2.4.0", "pytorch-lightning==2.4.0", "setuptools<81"]
    assert driver.at_version("transformers", "4.53.3")["requirements"][:2] == ["transformers==4.53.3", "accelerate"]
    assert driver.at_version("keras", "3.8.0")["requirements"] == ["keras==3.8.0", "tensorflow-cpu", "tensorboard"]
    assert driver.at_version("keras", "3.8.0")["tests"] == driver.MATRIX["keras"]["tests"]


def test_the_oldest_torch_goes_with_lightnings_floor_and_the_newest_elsewhere(driver):
    """torch's floor (a CUDA build from PyPI, NumPy 1) in Lightning's venv only; --at gives the newest back."""
    lightning = driver.installed(driver.MATRIX["lightning"])
    assert "torch==2.2.2" in lightning and "numpy<2" in lightning and driver.NEWEST_TORCH not in lightning
    for name in ("transformers", "keras"):
        assert driver.installed(driver.MATRIX[name]).count(driver.NEWEST_TORCH) == 1
    swept = driver.installed(driver.at_version("lightning", "2.4.0"))
    assert driver.NEWEST_TORCH in swept and "torch==2.2.2" not in swept and "numpy<2" not in swept


@pytest.mark.parametrize("bad", ["tensorflow=2.16", "keras=", "keras", "keras=latest"])
def test_a_bad_at_is_refused_in_one_line(driver, capsys, monkeypatch, bad):
    monkeypatch.setattr("sys.argv", ["test_versions.py", "--at", bad])
    assert driver.main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NAME=VERSION" in err and bad in err


def test_the_python_entries_find_pyenvs_interpreters_and_never_its_shims(driver, tmp_path, monkeypatch):
    """CI's core-only runs on Python 3.10 and 3.13 take pyenv's versions; a shim that would exit 127 is no Python."""
    newest = tmp_path / "versions" / "3.10.13" / "bin" / "python3.10"
    for path in (tmp_path / "versions" / "3.10.4" / "bin" / "python3.10", newest, tmp_path / "shims" / "python3.13"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "shims"))
    assert driver.interpreter({"python": "3.10"}) == str(newest)
    assert driver.interpreter({"python": "3.13"}) is None
    assert driver.interpreter({}) is not None  # the frameworks' floors: this interpreter's base
    assert "torch==2.13.0" not in driver.installed(driver.MATRIX["python3.13"])


def test_help_describes_the_driver_in_whole_sentences(driver, capsys, monkeypatch):
    """--help's description is the docstring's first paragraph, not its first line cut mid-sentence."""
    monkeypatch.setattr("sys.argv", ["test_versions.py", "--help"])
    monkeypatch.setenv("COLUMNS", "300")  # one line: argparse would wrap at "requires-python"'s hyphen
    with pytest.raises(SystemExit):
        driver.main()
    description = " ".join(capsys.readouterr().out.split("options:")[0].split("\n\n", 1)[1].split())
    assert description == ("The adapter tests at the oldest supported version of each framework, each in its own"
                           " venv, and the whole suite without PyTorch at both ends of requires-python (3.10 and 3.13).")
