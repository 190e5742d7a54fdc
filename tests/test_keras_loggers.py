"""What W&B's and MLflow's own Keras integrations receive from ``EnergyCallback`` (README: put it
first so loggers after it see its values): ``WandbMetricsLogger`` (offline run, read back from its
file), ``MlflowCallback`` and ``mlflow.keras.autolog`` (file store, read back with ``MlflowClient``).

The torch backend runs ``keras_loggers_runner.py`` in a process of its own, on a fake clock
that only batches advance: every epoch's values they logged are that epoch's in the run's records
(its own, the run's totals to its end, per sample), each epoch once, across a ``BackupAndRestore``
resume and with the callback given after the loggers; step values reach their batch rows at a
``TensorBoard``'s logging steps. No network. This file never imports Keras itself.

And a logger on one rank only of a two-process job (``keras_ddp_script.py``): every rank takes the
step values at the same batches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from keras_runs import run_on_backends

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("keras_loggers_runner.py")
ALL = ["each_epoch", "step_values", "backup_resume", "energy_after_loggers", "mlflow_autolog"]
# The torch backend only: the loggers read the epoch's logs dict, whose values on every backend
# test_keras_logged_totals.py checks (the runner takes tensorflow and jax too: 5 scenarios pass on each,
# another ~35 s here).
SCENARIOS = {"torch": ALL}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    pytest.importorskip("wandb", reason="W&B's Keras logger is what these tests read back")
    pytest.importorskip("mlflow", reason="MLflow's Keras callback is what these tests read back")
    # WandbMetricsLogger imports tensorflow, whichever the backend: needs_tensorboard skips without it.
    return run_on_backends(tmp_path_factory, list(SCENARIOS), RUNNER, SCENARIOS, purpose="the W&B and MLflow logger tests")


@pytest.mark.parametrize("backend, scenario", [(b, s) for b, scenarios in SCENARIOS.items() for s in scenarios])
def test_wandb_and_mlflow_log_the_records_values(results, backend, scenario):
    outcome = results[backend]
    if isinstance(outcome, BaseException):
        pytest.skip(str(outcome))
    assert outcome[scenario] == "ok", outcome[scenario]


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> (step, value) of the scalars in Keras's event files under ``log_dir``, in the order written."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    values: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                array = make_ndarray(value.tensor) if value.HasField("tensor") else None
                if array is not None and array.shape == () and array.dtype.kind == "f":
                    values.setdefault(value.tag, []).append((event.step, float(array)))
    return values


@pytest.mark.distributed
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_tensorboard_on_rank_0_only_gets_step_values_and_no_rank_fails(tmp_path, backend):
    """Two ranks (gloo under Keras's torch backend, ``jax.distributed`` under JAX), rank 0 alone logging
    batches to TensorBoard (update_freq=1). The step values are a collective: on torch, rank 0 gathered
    alone at each batch, met by rank 1's epoch-end gather, and rank 1 aborted (gloo: "Received data size
    doesn't match"); JAX's Keras dispatches batch hooks on a thread pool, which the fix turns off."""
    for module in ("keras", backend, "tensorflow"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: Keras's TensorBoard on the {backend} backend needs it")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = Path(__file__).with_name("keras_ddp_script.py")
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_DDP_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    ranks = [subprocess.Popen([sys.executable, str(script), str(tmp_path), "1"], env={**base, "RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    errors = []
    for rank in ranks:
        try:
            errors.append(rank.communicate(timeout=240)[1])
        except subprocess.TimeoutExpired:  # a rank waiting in a collective the other never joins
            for each in ranks:
                each.kill()
            raise
    assert [rank.returncode for rank in ranks] == [0, 0], "\n".join(e[-3000:] for e in errors)
    histories = [json.loads((tmp_path / f"history-rank{r}.json").read_text()) for r in range(2)]
    for key in ("energy_kwh", "energy_kwh_total", "val_energy_kwh_total"):
        assert len(histories[0][key]) == 2 and histories[0][key] == histories[1][key], key
    # 48 samples by 16: 3 batches an epoch, each written with the run's total so far.
    live = [value for _, value in tensorboard_scalars(tmp_path / "tb" / "train").get("batch_energy_kwh_total", [])]
    assert len(live) == 6 and live == sorted(live) and live[-1] <= histories[0]["energy_kwh_total"][-1], live
