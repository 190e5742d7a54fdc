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


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_keras_without_its_backend_says_which_and_how_to_choose_another(backend):
    """The [keras] extra installs Keras alone, and [all] brings torch, which Keras does not pick by
    itself: the adapter failed with Keras' own `No module named 'tensorflow'`, raised deep inside it."""
    import importlib.util
    import os

    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    code = f"import sys; sys.modules[{backend!r}] = None; import greencallbacks.keras"  # as if it were not installed
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": backend})
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1
    assert last.startswith(f"ModuleNotFoundError: greencallbacks.keras needs Keras' backend {backend}, which is not "
                           "installed (no extra installs a backend): install it, or "), last
    assert "KERAS_BACKEND" in last


def test_a_keras_import_error_that_is_no_missing_backend_is_left_to_the_others():
    from greencallbacks import extras

    assert extras.missing_keras_backend(ModuleNotFoundError("No module named 'keras'", name="keras")) is None
    assert extras.missing_keras_backend(ImportError("cannot import name 'x' from 'jax'", name="jax")) is None


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("layout", ["loose ref", "packed ref", "detached", "worktree", "no clone", "unborn"])
def test_the_version_names_the_commit_checked_out_read_from_gits_files(tmp_path, layout):
    """From a git clone, ``__version__`` (every record's ``tool_version``) is the release with the
    commit as a PEP 440 local label, read from .git's files: no subprocess, no git needed."""
    from greencallbacks._version import RELEASE, version_of

    package = tmp_path / "clone" / "src" / "greencallbacks"
    package.mkdir(parents=True)
    git = tmp_path / "clone" / ".git"
    if layout == "loose ref":
        _write(git / "HEAD", "ref: refs/heads/main\n")
        _write(git / "refs" / "heads" / "main", SHA + "\n")
    elif layout == "packed ref":  # after `git gc`
        _write(git / "HEAD", "ref: refs/heads/main\n")
        _write(git / "packed-refs", f"# pack-refs with: peeled fully-peeled sorted\n{'f' * 40} refs/heads/other\n"
                                    f"{SHA} refs/heads/main\n")
    elif layout == "detached":
        _write(git / "HEAD", SHA + "\n")
    elif layout == "worktree":  # `git worktree add`: .git is a file; the branch is the main clone's
        main = tmp_path / "main.git"
        _write(main / "worktrees" / "clone" / "HEAD", "ref: refs/heads/topic\n")
        _write(main / "worktrees" / "clone" / "commondir", "../..\n")
        _write(main / "refs" / "heads" / "topic", SHA + "\n")
        _write(git, f"gitdir: {main / 'worktrees' / 'clone'}\n")
    elif layout == "unborn":  # `git init`, nothing committed
        _write(git / "HEAD", "ref: refs/heads/main\n")
    expected = RELEASE if layout in ("no clone", "unborn") else f"{RELEASE}+g{SHA[:12]}"
    assert version_of(str(package)) == expected


def test_records_say_which_development_state_wrote_them(tmp_path):
    """Every record said tool_version 0.1.0 since the first round, whatever the code: two states
    of the library could not be told apart. Run from this checkout, they name its commit."""
    import os
    import shutil

    import greencallbacks
    from greencallbacks._version import RELEASE
    from greencallbacks.carbon import Carbon
    from greencallbacks.meter import Meter
    from greencallbacks.records import read_records
    from greencallbacks.tracker import Tracker
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    src = os.path.dirname(os.path.dirname(os.path.abspath(greencallbacks.__file__)))
    root = os.path.dirname(src)
    if os.path.basename(src) != "src" or not os.path.exists(os.path.join(root, ".git")) or not shutil.which("git"):
        pytest.skip("greencallbacks is not imported from a git checkout here")
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("greencallbacks is not imported from a git checkout here")
    assert greencallbacks.__version__ == f"{RELEASE}+g{done.stdout.strip()[:12]}"
    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=10.0)], fallback=None, clock=clock)
    with Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path).start(meter) as tracker:
        with tracker.phase("train", 0):
            clock.advance(1.0)
    assert {r.tool_version for r in read_records(tmp_path)} == {greencallbacks.__version__}
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["tool_version"] == greencallbacks.__version__


def test_the_release_is_written_once_and_read_by_the_build():
    """pyproject.toml and _version.py both said 0.1.0, each to be bumped by hand; the build now
    reads the release from _version.py (statically: setuptools does not import the package)."""
    import os

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    import greencallbacks

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(greencallbacks.__file__))))
    if not os.path.isfile(os.path.join(root, "pyproject.toml")):
        pytest.skip("not run from the source tree")
    with open(os.path.join(root, "pyproject.toml"), "rb") as file:
        project = tomllib.load(file)
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "greencallbacks._version.RELEASE"}
