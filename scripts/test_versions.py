"""The adapter tests at the oldest supported version of each framework, each in its own venv, and
the whole suite without PyTorch at both ends of requires-python (3.10 and 3.13).

    python scripts/test_versions.py [--main-junit FILE] [--only NAME,...]
    python scripts/test_versions.py --at lightning=2.4.0 [--at keras=3.8.0 ...]


The main test run (scripts/test.sh) covers the newest versions, in the project's venv; this
covers the floors declared in pyproject.toml and the README's support table. Each entry of
``MATRIX`` gets a virtual environment of its own, created on first use and reused after (under
``$GC_OLDEST_DIR``, default /tmp/greencallbacks-oldest; the directory name carries a hash of the
requirements, so changing them builds a new one). The package itself is not installed there:
the tests run from this checkout with ``src`` on the path, so one venv serves any clone.

Prints the versions each run tested and its pass counts, then one closing line for all runs
(with the main run's counts when ``--main-junit`` names its JUnit XML). Exits non-zero when a
run fails, errors, collects no test (pytest's exit 5), or its venv lacks the pinned versions.
Standard library only: it runs before or without any venv.

``--at NAME=VERSION`` runs the same tests at any other release in the declared range (a
version sweep; CI tests the floors): the framework's own pins become that version and its
companions that are pinned to go with the floor (accelerate, TensorFlow) float to what pip
picks for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What every venv needs: the test runner, and the pinned torch of scripts/setup.sh (the CPU build
# on this machine) unless the entry pins its own. The frameworks' own companions float to whatever
# pip picks for the pin.
COMMON = ["pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100", "psutil>=5.9"]
NEWEST_TORCH = "torch==2.13.0"

# name -> the oldest supported versions (as pyproject.toml declares them), the test files that
# exercise them, and the distributions whose versions are printed.
MATRIX = {
    "transformers": {
        "requirements": ["transformers==4.47.1", "accelerate==1.2.1", "tensorboard", "mlflow", "wandb"],
        "tests": ["tests/test_hf.py", "tests/test_hf_hpsearch.py", "tests/test_hf_flows_more.py", "tests/test_flows_hf.py", "tests/test_hf_distributed.py", "tests/test_live.py",
                  "tests/test_hf_callbacks.py", "tests/test_heartbeat.py", "tests/test_hf_everyday.py",
                  "tests/test_hf_trainer_flows.py", "tests/test_hf_epoch_labels.py", "tests/test_hf_paths_more.py",
                  "tests/test_hf_resume_skips.py", "tests/test_hf_logged_totals.py", "tests/test_hf_trainer_options.py", "tests/test_hf_replaced_callback.py", "tests/test_co2_flows_fake_clock.py",
                  "tests/test_distributed_live.py",
                  "tests/test_distributed_logged_totals.py", "tests/test_report_run_sets.py", "tests/test_hf_two_grids_resume.py",
                  "tests/test_step_values_exact_joules.py", "tests/test_hf_tokens.py",
                  # transformers 4 counts a micro-batch's tokens before it trains (a path 5 never takes).
                  "tests/test_hf_forward_crash_tokens.py", "tests/test_forked_child_exit.py",
                  "tests/test_hf_tokens_in_part.py", "tests/test_hf_report_tokens.py", "tests/test_hf_eval_repeats_tokens.py",
                  "tests/test_hf_eval_repeats_counter_calls.py", "tests/test_report_crash_wording_one_epoch.py",
                  "tests/test_hf_eval_repeats_batch_kinds.py", "tests/test_report_steps_of_a_later_start.py",
                  "tests/test_samples_records_in_loops.py", "tests/test_samples_nested_order.py"],
        "report": ["transformers", "accelerate", "torch", "tensorboard", "mlflow", "wandb"],
    },
    "lightning": {
        # Lightning 2.2 imports pkg_resources, which setuptools 81 removed. With the oldest torch the
        # extras allow (torch>=2.2), released with it: PyPI's only build of it is CUDA's (2.5 GB to
        # download, 6 GB installed), and it runs on the CPU; built against NumPy 1.
        "requirements": ["lightning==2.2.0", "pytorch-lightning==2.2.0", "torch==2.2.2", "numpy<2", "setuptools<81",
                         "tensorboard", "mlflow", "wandb", "pandas"],
        "tests": ["tests/test_lightning.py", "tests/test_flows_lightning.py", "tests/test_lightning_ddp.py",
                  "tests/test_live.py", "tests/test_heartbeat.py", "tests/test_lightning_everyday.py",
                  "tests/test_lightning_evaluation_flows.py", "tests/test_distributed_everyday.py",
                  "tests/test_lightning_trainer_options.py", "tests/test_lightning_flow_regressions.py",
                  "tests/test_lightning_paths_more.py", "tests/test_distributed_paths_more.py",
                  "tests/test_lightning_logged_totals.py", "tests/test_distributed_logged_totals.py",
                  "tests/test_report_run_sets.py", "tests/test_budget_everyday.py", "tests/test_distributed_live.py",
                  "tests/test_budget_step_stops.py", "tests/test_lightning_callback_metrics_exact.py",
                  "tests/test_step_values_exact_joules.py", "tests/test_report_validation_crash.py",
                  "tests/test_lightning_interrupted_evaluations.py", "tests/test_forked_child_exit.py",
                  "tests/test_budget_kept_by_evaluations.py", "tests/test_prediction_series_after_validation.py",
                  "tests/test_ddp_live_intensity_labels.py", "tests/test_samples_combined_hooks.py",
                  "tests/test_lightning_step_values_skipped_batches.py", "tests/test_lightning_tokens.py",
                  "tests/test_lightning_tokens_in_part.py", "tests/test_distributed_four_loggers.py",
                  "tests/test_lightning_resumed_epoch_first_batch_none.py", "tests/test_lightning_tokens_per_loader.py",
                  "tests/test_lightning_user_failures.py", "tests/test_samples_records_beside_labels.py",
                  "tests/test_samples_records_in_loops.py", "tests/test_samples_nested_order.py",
                  "tests/test_samples_unbatched.py", "tests/test_report_steps_of_a_later_start.py", "tests/test_report_evaluation_sessions.py",
                  "tests/test_report_latex_names.py", "tests/test_whatif_rank_parts.py",
                  # A private seam (the checkpoint an evaluation restores, 2.2 to 2.4) and its fallback.
                  "tests/test_lightning_checkpoint_evaluations.py", "tests/test_lightning_checkpoint_labels.py", "tests/test_co2_flows_fake_clock.py",
                  # A private seam (CombinedLoader's mode) and its guard, at the floor too.
                  "tests/test_samples_frameworks.py::test_lightning_counts_each_loader_of_a_combined_batch_in_every_loop",
                  "tests/test_samples_frameworks.py::test_lightning_a_combined_loaders_mode_it_cannot_read_leaves_batches_counted_whole"],
        "report": ["lightning", "pytorch-lightning", "lightning-utilities", "torch", "numpy", "setuptools"],
    },
    "keras": {
        # No jax here: Keras 3.3.3 on jax 0.4.26 cannot fit a model again after a fit raised
        # (its variables are left without an initializer), so the crash-and-resume scenarios fail
        # inside Keras; the jax backend is tested at the newest versions only and skips here.
        "requirements": ["keras==3.3.3", "tensorflow-cpu==2.16.2", "tensorboard"],
        "tests": ["tests/test_keras.py", "tests/test_flows_keras.py", "tests/test_live.py", "tests/test_keras_models.py",
                  "tests/test_keras_counts.py", "tests/test_keras_custom_steps.py", "tests/test_heartbeat.py",
                  "tests/test_keras_everyday.py", "tests/test_keras_history.py", "tests/test_keras_fits_again.py",
                  "tests/test_keras_paths_more.py", "tests/test_keras_logged_totals.py", "tests/test_keras_fit_options.py",
                  "tests/test_keras_user_sequences.py", "tests/test_keras_nested_depth.py",
                  "tests/test_keras_nested_more.py", "tests/test_keras_loggers.py", "tests/test_forked_child_exit.py",
                  "tests/test_budget_kept_by_evaluations.py", "tests/test_keras_in_process_distribution.py",
                  "tests/test_keras_failed_epoch_tokens.py", "tests/test_keras_failed_epoch_samples.py",
                  "tests/test_keras_failed_validation_tokens.py", "tests/test_keras_failed_epoch_passes.py",
                  "tests/test_keras_failed_execution_counts.py", "tests/test_keras_unseen_evaluate_counts.py"],
        "report": ["keras", "torch", "tensorflow-cpu", "numpy"],
    },
    # A middle release, for the sample counts: batch hooks at an execution's first step (before
    # 3.11), a tf.distribute count that sums no replicas (3.7 to 3.9), predict logs made floats (3.7+).
    "keras3.8": {
        "middle": True,  # not a floor: tested beside them
        "requirements": ["keras==3.8.0", "tensorflow-cpu==2.19.1", "tensorboard"],
        "tests": ["tests/test_keras_counts.py", "tests/test_keras_custom_steps.py", "tests/test_keras_models.py",
                  "tests/test_keras_in_process_distribution.py", "tests/test_keras_failed_epoch_tokens.py",
                  "tests/test_keras_failed_epoch_samples.py", "tests/test_keras_failed_validation_tokens.py",
                  "tests/test_keras_failed_epoch_passes.py", "tests/test_keras_failed_execution_counts.py",
                  "tests/test_keras_unseen_evaluate_counts.py"],
        "report": ["keras", "torch", "tensorflow-cpu", "numpy"],
    },
}

# Both ends of requires-python (CI's own interpreter is 3.11): the whole suite without PyTorch,
# whose wheels for these Pythons on this registry are CUDA builds of several GB. The core, the
# CLI, the reports, the sensors' fakes against the real GPU bindings, at their declared floors
# on 3.10 and their newest on 3.13; what needs a framework skips.
for _version, _bindings in (("3.10", ["nvidia-ml-py==12.535.77", "amdsmi==6.1.0"]), ("3.13", ["nvidia-ml-py", "amdsmi"])):
    MATRIX[f"python{_version}"] = {
        "python": _version, "torch": False,
        "requirements": [*_bindings, "matplotlib", "pandas"],
        "tests": ["tests"],
        "report": ["psutil", "nvidia-ml-py", "amdsmi", "matplotlib"],
    }

# name -> the distributions pinned to the framework's version, and the companions pinned only to
# go with the floor (unpinned for --at).
FRAMEWORK_PINS = {
    "transformers": (["transformers"], ["accelerate"]),
    "lightning": (["lightning", "pytorch-lightning"], []),
    "keras": (["keras"], ["tensorflow-cpu"]),
}


def at_version(name: str, version: str) -> dict:
    """MATRIX[name] with the framework pinned at ``version`` and its floor's companions unpinned."""
    own, companions = FRAMEWORK_PINS[name]
    requirements = []
    for requirement in MATRIX[name]["requirements"]:
        base = requirement.split("==")[0].split("<")[0].split("[")[0]
        if base in ("torch", "numpy"):
            continue  # the floor's torch (and the NumPy 1 it was built for) give way to the newest
        if base in own:
            requirement = f"{base}=={version}"
        elif base in companions:
            requirement = requirement.split("==")[0]
        requirements.append(requirement)
    return {**MATRIX[name], "requirements": requirements}


# The distributions whose versions the main (newest) run reports.
MAIN_REPORT = ["transformers", "accelerate", "lightning", "pytorch-lightning", "keras", "torch", "tensorflow-cpu",
               "jax", "trl"]


def log(message: str) -> None:
    print(f"[versions] {message}", flush=True)


def installed(spec: dict) -> list[str]:
    """Everything pip installs into the entry's venv: COMMON, the newest torch unless it pins one (or
    wants none), its own."""
    own_torch = any(r.split("==")[0].split("<")[0].split(">")[0] == "torch" for r in spec["requirements"])
    return COMMON + ([] if own_torch or spec.get("torch") is False else [NEWEST_TORCH]) + spec["requirements"]


def interpreter(spec: dict) -> str | None:
    """The entry's Python: this one's base interpreter, or ``pythonX.Y`` on PATH or under pyenv."""
    version = spec.get("python")
    if version is None:
        # The base interpreter, not a venv's: sys._base_executable is what `venv` itself would use.
        return getattr(sys, "_base_executable", sys.executable)
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(root.glob(f"{version}.*/bin/python{version}"),
                        key=lambda p: [int(n) if n.isdigit() else -1 for n in p.parts[-3].split(".")])
    if candidates:
        return str(candidates[-1])
    found = shutil.which(f"python{version}")
    # pyenv's shim for a version it does not select exits 127: only a real interpreter will do.
    return found if found and "/shims/" not in found else None


def venv_dir(name: str, spec: dict) -> Path:
    python = spec.get("python") or f"{sys.version_info[0]}.{sys.version_info[1]}"
    key = hashlib.sha256(json.dumps([installed(spec), python]).encode()).hexdigest()[:10]
    base = Path(os.environ.get("GC_OLDEST_DIR", "/tmp/greencallbacks-oldest"))
    return base / f"{name}-{key}"


def ensure_venv(name: str, spec: dict) -> Path:
    """The venv's python, built if it is missing or its last install did not finish."""
    directory = venv_dir(name, spec)
    python = directory / "bin" / "python"
    done = directory / ".installed"
    if done.exists():
        log(f"{name}: reusing {directory}")
        return python
    log(f"{name}: creating {directory} ({' '.join(spec['requirements'])})")
    subprocess.run(["rm", "-rf", str(directory)], check=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([interpreter(spec), "-m", "venv", str(directory)], check=True)
    started = time.monotonic()
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--quiet", "--disable-pip-version-check", *installed(spec)],
        check=True,
    )
    done.write_text(json.dumps({"requirements": installed(spec)}))
    log(f"{name}: installed in {time.monotonic() - started:.0f} s")
    return python


def versions(python: Path | str, distributions: list[str]) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([str(python), "-c", code, *distributions], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def counts(junit: Path) -> dict[str, int]:
    """passed/failed/skipped from a pytest JUnit XML file (errors count as failed; so does a file
    left unreadable, as by a full disk)."""
    try:
        root = ET.parse(junit).getroot()
    except ET.ParseError as error:
        log(f"{junit}: unreadable ({error})")
        return {"passed": 0, "failed": 1, "skipped": 0}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = total["failures"] + total["errors"]
    return {"passed": total["tests"] - failed - total["skipped"], "failed": failed, "skipped": total["skipped"]}


def pinned(spec: dict, found: dict[str, str]) -> list[str]:
    """The exact pins (name==version) that the venv does not hold."""
    missing = []
    for requirement in spec["requirements"]:
        if "==" in requirement:
            name, version = requirement.split("==")
            name = name.split("[")[0]
            if found.get(name) != version:
                missing.append(f"{requirement} (found {found.get(name)})")
    return missing


def run_one(name: str, spec: dict, out_dir: Path) -> dict:
    python = ensure_venv(name, spec)
    exact = [r.split("==")[0].split("[")[0] for r in spec["requirements"] if "==" in r]
    found = versions(python, sorted(set(spec["report"] + exact)))
    missing = pinned(spec, found)
    junit = out_dir / f"junit-{name}.xml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    log(f"{name}: {' '.join(f'{d} {v}' for d, v in found.items() if d in spec['report'])}: {' '.join(spec['tests'])}")
    started = time.monotonic()
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={junit}", *spec["tests"]],
        cwd=REPO, env=env,
    )
    result = {"name": name, "versions": {d: found[d] for d in spec["report"] if d in found}, "rc": done.returncode,
              "seconds": round(time.monotonic() - started), "missing": missing}
    result.update(counts(junit) if junit.exists() else {"passed": 0, "failed": 0, "skipped": 0})
    return result


def main() -> int:
    # The first paragraph: its first line alone ends mid-sentence.
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--only", default=None, help="comma-separated names from: " + ", ".join(MATRIX))
    parser.add_argument("--main-junit", type=Path, default=None, help="the main run's JUnit XML, for its counts")
    parser.add_argument("--main-python", default=None, help="the main venv's python, for its versions")
    parser.add_argument("--at", action="append", default=[], metavar="NAME=VERSION",
                        help="test NAME at VERSION instead of its floor (repeatable); runs only the names given")
    parser.add_argument("--discard", action="store_true",
                        help="build each venv just before its tests and remove it after (CI: a fresh machine, less disk)")
    args = parser.parse_args()
    specs = {}
    for item in args.at:
        name, _, version = item.partition("=")
        if name not in FRAMEWORK_PINS or not version or not version[0].isdigit():
            print(f"test_versions: --at wants NAME=VERSION with NAME one of {', '.join(FRAMEWORK_PINS)}, got {item!r}",
                  file=sys.stderr)
            return 2
        specs[f"{name}-{version}"] = at_version(name, version)
    names = args.only.split(",") if args.only else list(MATRIX)
    unknown = [n for n in names if n not in MATRIX]
    if unknown:
        print(f"test_versions: unknown --only name(s) {', '.join(unknown)}; valid: {', '.join(MATRIX)}", file=sys.stderr)
        return 2
    if not specs:
        specs = {name: MATRIX[name] for name in names}
    kind = "at" if args.at else "oldest"
    out_dir = Path(os.environ.get("GC_OLDEST_DIR", "/tmp/greencallbacks-oldest")) / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    # A Python this machine lacks is said, loudly, but fails nothing: CI's machines carry pyenv's.
    absent = [name for name, spec in specs.items() if interpreter(spec) is None]
    for name in absent:
        log(f"{name}: no Python {specs.pop(name)['python']} on PATH or under pyenv: NOT TESTED")

    # Build the venvs side by side (mostly downloads and unpacking), then test one at a time. With
    # --discard each is built just before its tests and removed after them: the venvs hold 12.7 GB
    # together (measured 2026-12-06; the Lightning floor's, with its CUDA torch, 5.9), one at a time
    # at most 5.9. A CI run on stop 52's code ran out of disk.
    built = {}
    if not args.discard:
        with ThreadPoolExecutor(max_workers=min(3, len(specs))) as pool:
            built = {name: pool.submit(ensure_venv, name, spec) for name, spec in specs.items()}
    results = []
    for name, spec in specs.items():
        try:
            if name in built:
                built[name].result()
            results.append(run_one(name, spec, out_dir))  # (builds the venv where it is not yet)
        except subprocess.CalledProcessError as error:  # the venv could not be built
            log(f"{name}: set-up failed: {error}")
            results.append({"name": name, "versions": {}, "rc": 1, "seconds": 0, "missing": ["set-up failed"],
                            "passed": 0, "failed": 1, "skipped": 0})
        if args.discard:
            shutil.rmtree(venv_dir(name, spec), ignore_errors=True)

    rows = []
    if args.main_junit is not None:
        main_counts = counts(args.main_junit) if args.main_junit.exists() else {"passed": 0, "failed": 1, "skipped": 0}
        main_versions = versions(args.main_python or sys.executable, MAIN_REPORT) if args.main_python else {}
        rows.append(("newest (whole suite)", main_versions, main_counts, []))
    for r in results:
        r["label"] = (f"core on {r['name']}" if "python" in specs[r["name"]]
                      else f"{'middle' if specs[r['name']].get('middle') else kind} {r['name']}")
        rows.append((r["label"], r["versions"], r, r["missing"]))

    print("\nframework versions tested:")
    bad = False
    for label, found, c, missing in rows:
        shown = ", ".join(f"{d} {v}" for d, v in found.items())
        note = f"  MISSING PINS: {'; '.join(missing)}" if missing else ""
        print(f"  {label:<22} {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped   [{shown}]{note}")
    for r in results:
        # pytest exits 5 when it collected nothing: a run that tested nothing must not pass.
        if r["rc"] != 0 or r["failed"] or r["passed"] == 0 or r["missing"]:
            bad = True
            print(f"  FAILED: {r['label']} (pytest exit {r['rc']}, {r['passed']} passed)")
    for name in absent:
        print(f"  NOT TESTED: {name} (no such interpreter here)")
    passed = sum(c["passed"] for _, _, c, _ in rows)
    failed = sum(c["failed"] for _, _, c, _ in rows)
    skipped = sum(c["skipped"] for _, _, c, _ in rows)
    print(f"all: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
