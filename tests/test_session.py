"""EnergySession's construction checks, and the Keras callback's own arguments: what was accepted
and then failed or was lost during the run, or refused though valid."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from greencallbacks.carbon import IntensitySeries
from greencallbacks.records import read_records
from greencallbacks.sensors.estimate import MAX_CPU_TDP_W  # the bound the message names
from greencallbacks.session import EnergySession
from tests.fakes.scripted import ScriptedSensor
from tests.fakes.system_clock import SystemClock

REPO = Path(__file__).resolve().parents[1]
T0 = 1.7e9


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_output_dir_that_is_a_file_is_refused_naming_it(tmp_path, where):
    """Accepted before: the first phase end warned the records would be written later, they
    never were, and the run's records and summary were lost."""
    a_file = tmp_path / "taken.txt"
    a_file.write_text("")
    output_dir = a_file if where == "file" else a_file / "logs"
    with pytest.raises(ValueError, match=r"output_dir .*taken\.txt.*not a directory"):
        EnergySession(output_dir=str(output_dir), sensors=[])


def test_an_output_dir_not_there_yet_is_accepted(tmp_path):
    session = EnergySession(output_dir=tmp_path / "new" / "logs", sensors=[])
    assert session.output_dir == tmp_path / "new" / "logs"


@pytest.mark.parametrize("cpu_tdp_w", [True, np.True_, 1e308, MAX_CPU_TDP_W * 1.01])
def test_cpu_tdp_w_refuses_bools_and_watts_no_cpu_draws(cpu_tdp_w):
    """True was taken as 1 W; 1e308 W overflowed every boundary (no record, no summary)."""
    with pytest.raises(ValueError, match=f"cpu_tdp_w .* up to {MAX_CPU_TDP_W:g}"):
        EnergySession(cpu_tdp_w=cpu_tdp_w, sensors=[])


@pytest.mark.parametrize("cpu_tdp_w", [65, 65.5, np.float32(280), np.int64(500), MAX_CPU_TDP_W])
def test_cpu_tdp_w_takes_any_real_number_of_watts(cpu_tdp_w):
    session = EnergySession(cpu_tdp_w=cpu_tdp_w, sensors=[])
    assert session.cpu_tdp_w == float(cpu_tdp_w) and type(session.cpu_tdp_w) is float


@pytest.mark.parametrize("gpus", [[np.int64(0)], np.array([0, 1]), (np.uint8(1),), range(2), (i for i in (0, 1))],
                         ids=["np.int64", "array", "uint8-tuple", "range", "generator"])
def test_gpus_takes_numpy_integers_and_stores_plain_ints(gpus):
    """np.int64 indices (an array of them, e.g. from np.flatnonzero) were refused; a generator
    was read twice, once to check it and once (empty) to keep it."""
    session = EnergySession(gpus=gpus, sensors=[])
    assert session.gpus in ([0], [0, 1], [1]) and all(type(i) is int for i in session.gpus)


@pytest.mark.parametrize("gpus", [[True], [np.True_], [-1], [0.0], np.array(0), np.array([[0]]), "0", 0])
def test_gpus_still_refuses_what_is_no_device_index(gpus):
    with pytest.raises(ValueError, match="gpus must be"):
        EnergySession(gpus=gpus, sensors=[])


KERAS_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from greencallbacks.keras import EnergyCallback
    out = {{"samples_per_epoch": type(EnergyCallback(samples_per_epoch=np.int64(10), sensors=[]).samples_per_epoch).__name__}}
    try:
        EnergyCallback(framework="x", sensors=[])
        out["framework"] = None
    except TypeError as error:
        out["framework"] = str(error)
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_keras_callback_takes_numpy_samples_and_refuses_framework_by_name(tmp_path):
    """samples_per_epoch=np.int64(10) (a data set's length) was refused; framework="x" was
    dropped unsaid, where the other adapters refuse it naming the valid arguments."""
    pytest.importorskip("torch")  # its backend
    pytest.importorskip("keras")
    script = tmp_path / "child.py"
    script.write_text(KERAS_CHILD.format(repo=str(REPO / "src")))
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["samples_per_epoch"] == "int"
    assert out["framework"] is not None
    assert "unexpected keyword argument 'framework'" in out["framework"] and "samples_per_epoch" in out["framework"]


def test_a_runs_later_call_is_stamped_and_priced_on_its_first_calls_clock(tmp_path, monkeypatch):
    """``fit`` then ``test`` (a new meter each) with the system clock stepped an hour back
    between them: the test was stamped an hour before the fit's end and priced at that hour's
    intensity (50 g/kWh where the run's hour has 100)."""
    system = SystemClock(monkeypatch, unix_s=T0)
    hours = [T0 + 3600 * k for k in range(-3, 4)]
    series = IntensitySeries(tuple(hours), tuple(50.0 if t < T0 else 100.0 for t in hours), "test hours")
    gpu = ScriptedSensor("gpu0", system.steady, power_w=100.0)
    session = EnergySession(series=series, sensors=[gpu], output_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what is estimated, what is assumed: not this test's
        for phase, step_s in (("train", 0.0), ("test", -3600.0)):
            system.step(step_s)
            session.start()
            session.tracker.begin(phase, 0)
            system.advance(10.0)
            session.tracker.end(phase)
            system.advance(1.0)
            session.stop()
    records = sorted(read_records(tmp_path), key=lambda r: r.seq)
    starts = [dt.datetime.fromisoformat(r.start_time.replace("Z", "+00:00")).timestamp() for r in records]
    assert [r.phase for r in records if r.phase in ("train", "test")] == ["train", "test"]
    assert starts == sorted(starts) and T0 <= starts[0] and starts[-1] < T0 + 60
    assert {r.intensity_gco2eq_per_kwh for r in records} == {100.0}
