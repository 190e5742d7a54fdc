"""Bad input: every public constructor and every command-line argument, tried with wrong types
and values. Each must fail before any training starts, with a message that names the argument
(``ValueError``, or argparse's exit status 2 with no traceback), never later inside a hook.

Malformed data files (the shipped tables, intensity series, records) go through the same loaders
the library uses and fail with a message that names the file and the place.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from greencallbacks import cli
from greencallbacks.carbon import Carbon
from greencallbacks.carbon import tables
from greencallbacks.carbon.live import ElectricityMapsSource, UkCarbonIntensitySource, WattTimeSource
from greencallbacks.carbon.series import IntensitySeries
from greencallbacks.carbon_aware import CarbonAwarePause
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.sensors.estimate import ConstantPowerSensor, CpuEstimateSensor, RamEstimateSensor
from greencallbacks.session import EnergySession
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

REPO = Path(__file__).resolve().parents[1]
NAN, INF = math.nan, math.inf


def raises_naming(argument: str, build) -> str:
    with pytest.raises(ValueError) as raised:
        build()
    message = str(raised.value)
    assert argument in message, f"{message!r} does not name {argument!r}"
    return message


# ---------------------------------------------------------------------------------- Carbon
CARBON_CASES = [
    ({"intensity": -1}, "intensity"),
    ({"intensity": NAN}, "intensity"),
    ({"intensity": INF}, "intensity"),
    ({"intensity": "400"}, "intensity"),
    ({"intensity": True}, "intensity"),
    ({"intensity": [400]}, "intensity"),
    ({"intensity": 1e6}, "intensity"),
    ({"country": "XX"}, "country"),
    ({"country": ""}, "country"),
    ({"country": 33}, "country"),
    ({"country": ["FR"]}, "country"),
    ({"zone": "US-XX"}, "zone"),
    ({"zone": 5}, "zone"),
    ({"region": "aws:nowhere-1"}, "region"),
    ({"region": 1.5}, "region"),
    ({"region": "us-east-1", "provider": "ibm"}, "provider"),
    # Said "provider needs region": an unknown provider is named as such, with the valid ones.
    ({"provider": "nope"}, "unknown provider 'nope'; expected one of aws, azure, gcp"),
    ({"provider": "aws"}, "region"),
    ({"series": 42}, "series"),
    ({"series": "/no/such/series.csv"}, "series"),
    ({"pue": 0.5}, "pue"),
    ({"pue": NAN}, "pue"),
    ({"pue": "1.2"}, "pue"),
    ({"pue": 10}, "pue"),
    ({"country": "FR", "zone": "US-CA"}, "country"),
    ({"intensity": 100, "series": "x.csv"}, "intensity"),
]


@pytest.mark.parametrize("kwargs, argument", CARBON_CASES, ids=[str(c[0]) for c in CARBON_CASES])
def test_carbon_rejects_bad_arguments_by_name(kwargs, argument):
    raises_naming(argument, lambda: Carbon(**kwargs))


# ----------------------------------------------------------------- EnergySession / Tracker
SESSION_CASES = [
    ({"gpus": "all"}, "gpus"),
    ({"gpus": [-1]}, "gpus"),
    ({"gpus": [0.5]}, "gpus"),
    ({"gpus": 3}, "gpus"),
    ({"cpu_tdp_w": 0}, "cpu_tdp_w"),
    ({"cpu_tdp_w": -65}, "cpu_tdp_w"),
    ({"cpu_tdp_w": "65"}, "cpu_tdp_w"),
    ({"cpu_tdp_w": NAN}, "cpu_tdp_w"),
    ({"extra_sensors": [42]}, "extra_sensors"),
    ({"extra_sensors": 42}, "extra_sensors"),
    ({"sensors": ["gpu0"]}, "sensors"),
    ({"carbon_aware": 300}, "carbon_aware"),
    ({"run_id": ""}, "run_id"),
    ({"run_id": 7}, "run_id"),
    ({"output_dir": 3}, "output_dir"),
    ({"output_dir": ["logs"]}, "output_dir"),
    ({"pue": 0.9}, "pue"),
    ({"country": "Atlantis"}, "country"),
]


@pytest.mark.parametrize("kwargs, argument", SESSION_CASES, ids=[str(c[0]) for c in SESSION_CASES])
def test_energy_session_rejects_bad_arguments_by_name(kwargs, argument):
    raises_naming(argument, lambda: EnergySession(**kwargs))


TRACKER_CASES = [
    ({"run_id": ""}, "run_id"),
    ({"run_id": 12}, "run_id"),
    ({"output_dir": 3}, "output_dir"),
    ({"carbon": "FR"}, "carbon"),
    ({"carbon": 400}, "carbon"),
]


@pytest.mark.parametrize("kwargs, argument", TRACKER_CASES, ids=[str(c[0]) for c in TRACKER_CASES])
def test_tracker_rejects_bad_arguments_by_name(kwargs, argument):
    raises_naming(argument, lambda: Tracker(**kwargs))


def test_tracker_rejects_an_unknown_phase_before_measuring():
    clock = FakeClock()
    tracker = Tracker()
    tracker.start(Meter([ScriptedSensor("gpu0", clock)], fallback=None, clock=clock))
    for phase in ("training", "other", "", None, 3):
        raises_naming("phase", lambda: tracker.begin(phase))
    tracker.finish()


METER_CASES = [
    ({"sensors": [42]}, "sensors"),
    ({"sensors": ["gpu0"]}, "sensors"),
    ({"sensors": None}, "sensors"),
    ({"fallback": 3}, "fallback"),
    ({"sync": "cuda"}, "sync"),
    ({"clock": 0.0}, "clock"),
    ({"wall_clock": "now"}, "wall_clock"),
]


@pytest.mark.parametrize("kwargs, argument", METER_CASES, ids=[str(c[0]) for c in METER_CASES])
def test_meter_rejects_bad_arguments_by_name(kwargs, argument):
    clock = FakeClock()
    settings = {"sensors": [ScriptedSensor("gpu0", clock)], **kwargs}
    raises_naming(argument, lambda: Meter(settings.pop("sensors"), **settings))


def test_meter_rejects_duplicate_sensor_names():
    clock = FakeClock()
    raises_naming("sensors", lambda: Meter([ScriptedSensor("a", clock), ScriptedSensor("a", clock)]))


# ----------------------------------------------------------------------------- sensors
SENSOR_CASES = [
    (CpuEstimateSensor, {"tdp_w": 0}, "tdp_w"),
    (CpuEstimateSensor, {"tdp_w": "ninety"}, "tdp_w"),
    (CpuEstimateSensor, {"tdp_w": INF}, "tdp_w"),
    (CpuEstimateSensor, {"share": 0}, "share"),
    (CpuEstimateSensor, {"share": 1.5}, "share"),
    (CpuEstimateSensor, {"share": "half"}, "share"),
    (CpuEstimateSensor, {"logical_cpus": 0}, "logical_cpus"),
    (CpuEstimateSensor, {"logical_cpus": "8"}, "logical_cpus"),
    (CpuEstimateSensor, {"cpu_seconds": 5}, "cpu_seconds"),
    (CpuEstimateSensor, {"poll_interval_s": -1}, "poll_interval_s"),
    (RamEstimateSensor, {"w_per_gb": -0.37}, "w_per_gb"),
    (RamEstimateSensor, {"w_per_gb": NAN}, "w_per_gb"),
    (RamEstimateSensor, {"basis": "node"}, "basis"),
    (RamEstimateSensor, {"share": 0}, "share"),
    (RamEstimateSensor, {"memory_bytes": 8e9}, "memory_bytes"),
    (RamEstimateSensor, {"poll_interval_s": 0}, "poll_interval_s"),
    (ConstantPowerSensor, {"name": "", "watts": 10}, "name"),
    (ConstantPowerSensor, {"name": 5, "watts": 10}, "name"),
    (ConstantPowerSensor, {"name": "switch", "watts": -1}, "watts"),
    (ConstantPowerSensor, {"name": "switch", "watts": None}, "watts"),
    (ConstantPowerSensor, {"name": "switch", "watts": 40, "kind": "router"}, "kind"),
]


@pytest.mark.parametrize(
    "cls, kwargs, argument", SENSOR_CASES, ids=[f"{c[0].__name__}-{c[1]}" for c in SENSOR_CASES]
)
def test_sensors_reject_bad_arguments_by_name(cls, kwargs, argument):
    raises_naming(argument, lambda: cls(**kwargs))


PAUSE_CASES = [
    ({"threshold_g_per_kwh": 0, "max_delay_s": 60}, "threshold_g_per_kwh"),
    ({"threshold_g_per_kwh": "300", "max_delay_s": 60}, "threshold_g_per_kwh"),
    ({"threshold_g_per_kwh": True, "max_delay_s": 60}, "threshold_g_per_kwh"),
    ({"threshold_g_per_kwh": 300, "max_delay_s": -1}, "max_delay_s"),
    ({"threshold_g_per_kwh": 300, "max_delay_s": INF}, "max_delay_s"),
    ({"threshold_g_per_kwh": 300, "max_delay_s": None}, "max_delay_s"),
    ({"threshold_g_per_kwh": 300, "max_delay_s": 60, "check_every_s": 0}, "check_every_s"),
    ({"threshold_g_per_kwh": 300, "max_delay_s": 60, "sleep": 5}, "sleep"),
    ({"threshold_g_per_kwh": 300, "max_delay_s": 60, "clock": "utc"}, "clock"),
]


@pytest.mark.parametrize("kwargs, argument", PAUSE_CASES, ids=[str(c[0]) for c in PAUSE_CASES])
def test_carbon_aware_pause_rejects_bad_arguments_by_name(kwargs, argument):
    raises_naming(argument, lambda: CarbonAwarePause(**kwargs))


def test_carbon_aware_pause_caps_its_threshold_as_every_intensity_is_capped():
    """5000 g/kWh was accepted: no grid reaches it, so the pause never paused (a unit mistake,
    g/MWh or lb/MWh), while intensity=5000 is refused everywhere else."""
    from greencallbacks.carbon.intensity import MAX_INTENSITY_G_PER_KWH

    message = raises_naming("threshold_g_per_kwh", lambda: CarbonAwarePause(5000, 60))
    assert f"at most {MAX_INTENSITY_G_PER_KWH:g} gCO2eq/kWh, got 5000" in message
    assert CarbonAwarePause(MAX_INTENSITY_G_PER_KWH, 60).threshold_g_per_kwh == MAX_INTENSITY_G_PER_KWH


# An integer no float can hold: math.isfinite and float() raised a bare OverflowError naming nothing.
HUGE = 10**400


def _huge_cases():
    from greencallbacks.budget import Budget
    from greencallbacks.embodied import embodied_for, estimate_embodied

    return [
        ("kwh", lambda: Budget(kwh=HUGE)),
        ("co2eq_g", lambda: Budget(co2eq_g=-HUGE)),
        ("warn_at", lambda: Budget(kwh=1, warn_at=HUGE)),
        ("pue", lambda: EnergySession(pue=HUGE)),
        ("intensity", lambda: EnergySession(intensity=HUGE)),
        ("lifetime_years", lambda: EnergySession(embodied={"lifetime_years": HUGE})),
        ("host_share", lambda: EnergySession(embodied={"host": "server", "host_share": HUGE})),
        ("duration_s", lambda: embodied_for([], HUGE)),
        ("hours", lambda: estimate_embodied(hours=HUGE)),
        ("threshold_g_per_kwh", lambda: CarbonAwarePause(HUGE, 60)),
        ("max_delay_s", lambda: CarbonAwarePause(300, HUGE)),
    ]


@pytest.mark.parametrize("case", range(len(_huge_cases())), ids=[c[0] for c in _huge_cases()])
def test_an_integer_past_a_float_is_refused_naming_the_argument(case):
    argument, build = _huge_cases()[case]
    message = raises_naming(argument, build)
    assert "must be" in message and "an integer of about " in message and "10**400" in message, message
    assert len(message) < 300  # its 401 digits are not printed


def test_the_number_check_reads_what_a_float_cannot_hold_as_nan():
    from fractions import Fraction

    from greencallbacks.checks import as_float, shown

    assert math.isnan(as_float(HUGE)) and math.isnan(as_float(-HUGE)) and math.isnan(as_float(Fraction(HUGE, 3)))
    assert math.isnan(as_float(True)) and math.isnan(as_float("1")) and math.isnan(as_float(None))
    assert as_float(3) == 3.0 and as_float(math.inf) == math.inf
    assert shown(-HUGE) == "an integer of about -10**400" and shown(10**5000).endswith("10**5000")  # no repr past 4300 digits
    assert shown(2.5) == "2.5" and shown("x") == "'x'"


LIVE_CASES = [
    (ElectricityMapsSource, ("",), {"token": "t0ken"}, "zone"),
    (ElectricityMapsSource, (42,), {"token": "t0ken"}, "zone"),
    (ElectricityMapsSource, ("DE",), {"token": ""}, "token"),
    (ElectricityMapsSource, ("DE",), {"token": 1234}, "token"),
    (ElectricityMapsSource, ("DE",), {"token": "t0ken", "timeout_s": 0}, "timeout_s"),
    (ElectricityMapsSource, ("DE",), {"token": "t0ken", "timeout_s": "5"}, "timeout_s"),
    (ElectricityMapsSource, ("DE",), {"token": "t0ken", "bucket_s": NAN}, "bucket_s"),
    (ElectricityMapsSource, ("DE",), {"token": "t0ken", "base_url": "file:///etc/passwd"}, "base_url"),
    (UkCarbonIntensitySource, (True,), {}, "region"),
    (UkCarbonIntensitySource, ("  ",), {}, "region"),
    (UkCarbonIntensitySource, (1.5,), {}, "region"),
    (UkCarbonIntensitySource, (), {"base_url": "ftp://x"}, "base_url"),
    (WattTimeSource, ("",), {}, "region"),
    (WattTimeSource, ("CAISO_NORTH",), {"password": ""}, "password"),
    (WattTimeSource, ("CAISO_NORTH",), {"username": 5}, "username"),
    (WattTimeSource, ("CAISO_NORTH",), {"timeout_s": -1}, "timeout_s"),
]


@pytest.mark.parametrize(
    "cls, args, kwargs, argument", LIVE_CASES, ids=[f"{c[0].__name__}-{c[1]}-{c[2]}" for c in LIVE_CASES]
)
def test_live_sources_reject_bad_arguments_by_name_without_a_request(cls, args, kwargs, argument, monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("a constructor opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    raises_naming(argument, lambda: cls(*args, **kwargs))


# ---------------------------------------------------------------------------- adapters
LIGHTNING_CASES = [
    ({"progress_bar": "yes"}, "progress_bar"),
    ({"sample_counter": 3}, "sample_counter"),
    ({"prefix": 3}, "prefix"),
    ({"pue": 0.5}, "pue"),
    ({"country": "XX"}, "country"),
    ({"intensity": -3}, "intensity"),
    ({"gpus": "cuda:0"}, "gpus"),
    ({"cpu_tdp_w": 0}, "cpu_tdp_w"),
    ({"run_id": ""}, "run_id"),
    ({"carbon_aware": True}, "carbon_aware"),
    ({"output_dir": 5}, "output_dir"),
]


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["lightning", "pl"])
@pytest.mark.parametrize("kwargs, argument", LIGHTNING_CASES, ids=[str(c[0]) for c in LIGHTNING_CASES])
def test_lightning_callback_rejects_bad_arguments_by_name(flavour, kwargs, argument):
    pytest.importorskip("lightning")
    if flavour == "lightning":
        from greencallbacks.lightning import EnergyCallback
    else:
        from greencallbacks.lightning.pl import EnergyCallback
    raises_naming(argument, lambda: EnergyCallback(**kwargs))


def test_lightning_callback_rejects_an_unknown_keyword_by_name():
    pytest.importorskip("lightning")
    from greencallbacks.lightning import EnergyCallback

    # Named as the user wrote it (EnergyCallback, not the EnergySession it passes keywords to),
    # with the near miss and every valid name.
    with pytest.raises(TypeError, match=r"EnergyCallback\(\) got an unexpected keyword argument 'contry'; "
                                        r"did you mean 'country'\? \(valid: .*progress_bar.*run_id.*step_metrics"):
        EnergyCallback(contry="FR")


def test_hf_callback_rejects_an_unknown_keyword_like_the_others():
    pytest.importorskip("transformers")
    from greencallbacks.hf import EnergyCallback

    with pytest.raises(TypeError, match=r"EnergyCallback\(\) got an unexpected keyword argument 'contry'; "
                                        r"did you mean 'country'\? \(valid: .*run_id.*token_counter"):
        EnergyCallback(contry="FR")


def test_the_keyword_check_survives_a_wrapped_constructor(monkeypatch):
    """Profilers and decorators wrap methods in ``(*args, **kwargs)`` (the benchmarks' SelfTime
    does): the valid names are read at import, so session keywords are still accepted."""
    pytest.importorskip("lightning")
    from greencallbacks.lightning import EnergyCallback
    from greencallbacks.session import EnergySession

    for owner in (EnergyCallback, EnergySession):
        original = owner.__init__

        def wrapped(*args, __original=original, **kwargs):
            return __original(*args, **kwargs)

        monkeypatch.setattr(owner, "__init__", wrapped)
    EnergyCallback(run_id="wrapped", gpus=None, sensors=[])
    with pytest.raises(TypeError, match="'contry'; did you mean 'country'"):
        EnergyCallback(contry="FR")


HF_CASES = [
    ({"pue": 0.5}, "pue"),
    ({"country": "XX"}, "country"),
    ({"intensity": "high"}, "intensity"),
    ({"gpus": "all"}, "gpus"),
    ({"cpu_tdp_w": -1}, "cpu_tdp_w"),
    ({"run_id": ""}, "run_id"),
    ({"extra_sensors": [1]}, "extra_sensors"),
    ({"carbon_aware": 1}, "carbon_aware"),
    ({"output_dir": 5}, "output_dir"),  # was made the directory "5"
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, argument", HF_CASES, ids=[str(c[0]) for c in HF_CASES])
def test_hf_callback_rejects_bad_arguments_by_name(kwargs, argument):
    pytest.importorskip("transformers")
    from greencallbacks.hf import EnergyCallback

    raises_naming(argument, lambda: EnergyCallback(**kwargs))


KERAS_CASES = [
    ({"samples_per_epoch": 0}, "samples_per_epoch"),
    ({"samples_per_epoch": 2.5}, "samples_per_epoch"),
    ({"samples_per_epoch": True}, "samples_per_epoch"),
    ({"pue": 0.5}, "pue"),
    ({"country": "XX"}, "country"),
    ({"gpus": "all"}, "gpus"),
    ({"cpu_tdp_w": "65"}, "cpu_tdp_w"),
    ({"run_id": ""}, "run_id"),
    ({"extra_sensors": ["fan"]}, "extra_sensors"),
    ({"output_dir": 5}, "output_dir"),
    ({"contry": "FR"}, "did you mean 'country'"),  # a TypeError that names the callback, as in Lightning
]

KERAS_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    from greencallbacks.keras import EnergyCallback
    out = []
    for kwargs in json.loads(sys.argv[1]):
        try:
            EnergyCallback(**kwargs)
            out.append(None)
        except ValueError as error:
            out.append(str(error))
        except TypeError as error:
            out.append(str(error) if str(error).startswith("EnergyCallback()") else "not a ValueError: " + repr(error))
        except Exception as error:
            out.append("not a ValueError: " + repr(error))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_keras_callback_rejects_bad_arguments_by_name(tmp_path):
    pytest.importorskip("torch")  # its backend
    pytest.importorskip("keras")
    script = tmp_path / "child.py"
    script.write_text(KERAS_CHILD.format(repo=str(REPO)))
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    cases = json.dumps([kwargs for kwargs, _ in KERAS_CASES])
    done = subprocess.run([sys.executable, str(script), cases], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    messages = json.loads(done.stdout.strip().splitlines()[-1])
    for (kwargs, argument), message in zip(KERAS_CASES, messages):
        assert message is not None and argument in message and "not a ValueError" not in message, (kwargs, message)


# -------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A small valid run on disk, and a valid intensity series covering it."""
    out = tmp_path_factory.mktemp("recorded")
    clock = FakeClock(start=0.0)
    t0 = 1.7e9
    tracker = Tracker(output_dir=out, run_id="cli", carbon=Carbon(intensity=300))
    tracker.start(Meter([ScriptedSensor("gpu0", clock)], fallback=None, clock=clock, wall_clock=lambda: clock() + t0))
    for epoch in range(2):
        tracker.begin("train", epoch)
        tracker.add_samples(10)
        clock.advance(60)
        tracker.end("train")
        tracker.begin("validation", epoch)
        tracker.add_samples(5)
        clock.advance(10)
        tracker.end("validation")
    tracker.finish()
    series = out / "series.csv"
    series.write_text("timestamp,g_per_kwh\n" + "".join(f"{int(t0 + h * 3600)},{100 + 10 * h}\n" for h in range(-2, 30)))
    return out, series


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    return code, err


def cli_cases(out: Path, series: Path) -> list[tuple[list[str], str]]:
    records = str(out)
    missing = str(out / "missing.jsonl")
    return [
        ([], "command"),
        (["train"], "command"),
        (["devices", "--jsn"], "--jsn"),
        (["devices", "extra"], "extra"),
        (["demo", "--epochs", "0"], "--epochs"),
        (["demo", "--epochs", "two"], "--epochs"),
        (["demo", "--epochs", "-3"], "--epochs"),
        (["demo", "--pue", "0.5"], "pue"),
        (["demo", "--pue", "abc"], "--pue"),
        (["demo", "--intensity", "-5"], "intensity"),
        (["demo", "--intensity", "lots"], "--intensity"),
        (["demo", "--country", "XX"], "country"),
        (["demo", "--zone", "US-XX"], "zone"),
        (["demo", "--region", "aws:nowhere"], "region"),
        (["demo", "--country", "FR", "--zone", "US-CA"], "country"),
        (["report"], "paths"),
        (["report", missing], "missing.jsonl"),
        (["report", records, "--format", "docx"], "--format"),
        (["report", records, "--compare-zones", ",,"], "--compare-zones"),
        (["report", records, "--compare-zones", "FR,Atlantis"], "Atlantis"),
        (["report", str(series)], "series.csv"),
        (["lifecycle", records], "--inferences"),
        (["lifecycle", records, "--inferences", "-1"], "--inferences"),
        (["lifecycle", records, "--inferences", "many"], "--inferences"),
        (["lifecycle", records, "--inferences", "nan"], "--inferences"),
        (["lifecycle", missing, "--inferences", "10"], "missing.jsonl"),
        (["lifecycle", records, "--inferences", "10", "--run-id", "nope"], "run"),
        (["lifecycle", records, "--inferences", "10", "--search", missing], "missing.jsonl"),
        (["estimate"], "--hours"),
        (["estimate", "--hours", "0"], "--hours"),
        (["estimate", "--hours", "inf"], "--hours"),
        (["estimate", "--hours", "1", "--gpus", "0"], "--gpus"),
        (["estimate", "--hours", "1", "--gpus", "1.5"], "--gpus"),
        (["estimate", "--hours", "1", "--usage", "2"], "usage"),
        (["estimate", "--hours", "1", "--usage", "x"], "--usage"),
        (["estimate", "--hours", "1", "--gpu", "Voodoo 5"], "gpu"),
        (["estimate", "--hours", "1", "--gpu-tdp", "-300"], "--gpu-tdp"),
        (["estimate", "--hours", "1", "--memory-gb", "-1"], "--memory-gb"),
        (["estimate", "--hours", "1", "--cpu-tdp", "65", "--cpu-cores", "8"], "--cpu-cores"),
        (["estimate", "--hours", "1", "--pue", "0"], "pue"),
        (["estimate", "--hours", "1", "--country", "XX"], "country"),
        (["estimate", "--hours", "1", "--gpu", "T4", "--embodied-host", "server", "--host-share", "2"], "--host-share"),
        (["estimate", "--hours", "1", "--memory-gb", "nan"], "--memory-gb"),
        (["whatif", records, "--intensity", str(out / "ms.csv")], "looks like milliseconds"),
        (["whatif"], "--intensity"),
        (["whatif", records], "--intensity"),
        (["whatif", records, "--intensity", str(out / "missing.csv")], "missing.csv"),
        (["whatif", records, "--intensity", str(series), "--window-h", "soon"], "--window-h"),
        (["whatif", records, "--intensity", str(series), "--window-h", "-5"], "--window-h"),  # the flag, not the Python argument
        (["whatif", records, "--intensity", str(series), "--threshold", "-1"], "threshold"),
        (["whatif", records, "--intensity", str(series), "--zones", "Atlantis"], "Atlantis"),
        (["whatif", missing, "--intensity", str(series)], "missing.jsonl"),
    ]


def test_cli_rejects_every_bad_argument_with_exit_2_naming_it_and_no_traceback(recorded, capsys):
    out, series = recorded
    (out / "ms.csv").write_text("timestamp,g_per_kwh\n1700000000000,300\n")  # a pandas export in ms
    failures = []
    for argv, argument in cli_cases(out, series):
        code, err = run_cli(argv, capsys)
        if code != 2 or argument not in err or "Traceback" in err:
            failures.append((argv, code, err[-300:]))
    assert not failures, "\n".join(map(str, failures))


def test_cli_bad_demo_settings_fail_before_training(tmp_path, capsys):
    code, err = run_cli(["demo", "--out", str(tmp_path / "demo"), "--pue", "0.5"], capsys)
    assert code == 2 and "pue" in err
    assert not (tmp_path / "demo").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("argv, missing, extra", [
    (["demo", "--epochs", "1"], ["torch", "lightning"], "greencallbacks[lightning]"),
    (["report", "{out}", "--plot", "{tmp}/energy.png"],
     ["matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"], "greencallbacks[plot]"),
    (["whatif", "{out}", "--intensity", "{series}", "--plot", "{tmp}/whatif.png"],
     ["matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"], "greencallbacks[plot]"),
], ids=["demo", "report --plot", "whatif --plot"])
def test_cli_without_an_optional_dependency_names_what_installs_it_in_one_line(
        recorded, tmp_path, capsys, monkeypatch, argv, missing, extra):
    """A core install (no extras) running the demo or a plot: one line and exit 1, not a traceback."""
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # `import` of it raises ModuleNotFoundError
    out, series = recorded
    try:
        code = cli.main([a.format(out=out, series=series, tmp=tmp_path) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    printed, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"needs {missing[0]}, which is not installed: pip install '{extra}'" in err
    assert not printed, printed  # before any work: the report was printed, then the plot failed


def test_cli_error_in_a_real_process_prints_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "greencallbacks", "estimate", "--hours", "1", "--country", "Atlantis"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "country" in done.stderr and "Traceback" not in done.stderr


# -------------------------------------------------------------------- malformed data files
def _corrupted(monkeypatch, file_name: str, corrupt) -> None:
    """Serve a corrupted copy of a shipped table through the library's own loader."""
    text = tables.read_table_text(file_name)
    real = tables.read_table_text
    monkeypatch.setattr(tables, "read_table_text", lambda name: corrupt(text) if name == file_name else real(name))
    clear_table_caches()


def clear_table_caches() -> None:
    from greencallbacks.carbon import intensity

    for loader in (tables.read_rows, tables.countries, tables.world, tables.us_states, tables.cloud_regions,
                   tables.pue_defaults, intensity._country_index, intensity._state_index, intensity._region_index):
        loader.cache_clear()


@pytest.fixture
def clean_tables():
    yield
    clear_table_caches()


def _replace_first_value(column: str, bad: str):
    def corrupt(text: str) -> str:
        comments = [line for line in text.splitlines() if line.startswith("#")]
        rows = list(csv.reader(line for line in text.splitlines() if not line.startswith("#")))
        rows[1][rows[0].index(column)] = bad
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return "\n".join(comments) + "\n" + buffer.getvalue()

    return corrupt


def _drop_column(column: str):
    def corrupt(text: str) -> str:
        lines = text.splitlines()
        header_index = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        return "\n".join(lines[: header_index] + [lines[header_index].replace(column, column + "_renamed")] + lines[header_index + 1 :])

    return corrupt


TABLE_CASES = [
    ("grid_countries.csv", _replace_first_value("g_per_kwh", "lots"), lambda: tables.countries()),
    ("grid_countries.csv", _replace_first_value("year", "twenty"), lambda: tables.countries()),
    ("grid_countries.csv", _drop_column("g_per_kwh"), lambda: tables.countries()),
    ("grid_world.csv", _replace_first_value("g_per_kwh", ""), lambda: tables.world()),
    ("grid_us_states.csv", _replace_first_value("g_per_kwh", "n/a"), lambda: tables.us_states()),
    ("cloud_regions.csv", _replace_first_value("g_per_kwh", "x"), lambda: tables.cloud_regions()),
    ("cloud_regions.csv", _drop_column("provider"), lambda: tables.cloud_regions()),
    ("pue.csv", _replace_first_value("pue", "one"), lambda: tables.pue_defaults()),
    ("grid_countries.csv", lambda text: "", lambda: Carbon(country="FR")),
]


@pytest.mark.parametrize("file_name, corrupt, load", TABLE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TABLE_CASES)])
def test_a_corrupted_shipped_table_fails_naming_the_file(file_name, corrupt, load, monkeypatch, clean_tables):
    # The tables are package data read through importlib.resources: no argument or environment
    # variable can point the loader at another file, so a corrupted copy is served in its place.
    _corrupted(monkeypatch, file_name, corrupt)
    with pytest.raises(ValueError) as raised:
        load()
    assert file_name in str(raised.value)


SERIES_CASES = [
    ("empty.csv", b"", "no header"),
    ("blank.csv", b"\n\n# only a comment\n", "no header"),
    ("noheader.csv", b"1700000000,300\n", "header"),
    ("nan.csv", b"timestamp,g_per_kwh\n1700000000,nan\n", "value"),
    ("inf.csv", b"timestamp,g_per_kwh\n1700000000,inf\n", "value"),
    ("negative.csv", b"timestamp,g_per_kwh\n1700000000,-5\n", "value"),
    ("text.csv", b"timestamp,g_per_kwh\n1700000000,high\n", "value"),
    ("badtime.csv", b"timestamp,g_per_kwh\nyesterday,300\n", "yesterday"),
    ("short.csv", b"timestamp,g_per_kwh\n1700000000\n", "columns"),
    ("backwards.csv", b"timestamp,g_per_kwh\n1700003600,300\n1700000000,200\n", "earlier"),
    ("binary.csv", bytes(range(256)) * 4, "binary.csv"),
    ("latin1.csv", "timestamp,g_per_kwh\n1700000000,300 \xe9\n".encode("latin-1"), "latin1.csv"),
    ("bad.json", b"[{\"timestamp\": 1700000000, \"g_per_kwh\": 300},", "invalid JSON"),
    ("object.json", b"{\"zone\": \"DE\"}", "list"),
    ("nulls.json", b"[[1700000000, null]]", "value"),
    ("bool.json", b"[[true, 300]]", "timestamp"),
    ("empty.json", b"[]", "no data"),
    ("ms.csv", b"timestamp,g_per_kwh\n1700000000000,300\n", "line 2: timestamp '1700000000000' is after 2200 read "
     "as unix seconds; it looks like milliseconds"),
    ("ns.json", b"[[1700000000000000000, 300]]", "it looks like nanoseconds"),
    ("far.csv", b"timestamp,g_per_kwh\n1e20,300\n", "outside 1970-2200"),
]


@pytest.mark.parametrize("name, content, why", SERIES_CASES, ids=[c[0] for c in SERIES_CASES])
def test_a_malformed_series_file_fails_naming_the_file(tmp_path, name, content, why):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as raised:
        IntensitySeries.from_file(path)
    message = str(raised.value)
    assert name in message and why in message, message
    # The same through the public constructor, before any training.
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        Carbon(series=path)


def test_a_directory_given_as_series_fails_naming_it(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        Carbon(series=tmp_path)


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"schema": "other/1"}\n{"schema": "other/1"}\n', "schema"),
        ("[1, 2, 3]\n{}\n", "not a greencallbacks record"),
        ("\x00\x01\x02\n{}\n", "not a greencallbacks record"),
        ('{"schema": "greencallbacks.record/1", "phase": "train"}\n{}\n', "not a greencallbacks record"),
        ('{"hello": [1, 2\n', "not a greencallbacks record"),  # a lone malformed line: no torn record
    ],
)
def test_a_malformed_records_file_fails_naming_the_line(tmp_path, content, why):
    path = tmp_path / "energy-records.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=why) as raised:
        read_records(path)
    assert "energy-records.jsonl:1" in str(raised.value)


@pytest.mark.parametrize("kwargs, argument", [({"cpu_tdp_w": 10**400}, "cpu_tdp_w"), ({"ram_w_per_gb": 10**400}, "ram_w_per_gb")])
def test_an_estimate_setting_past_a_float_is_refused_naming_it(kwargs, argument):
    """cpu_tdp_w=10**400 raised a bare OverflowError in the callbacks and in discover_sensors."""
    from greencallbacks.sensors.discover import discover_sensors

    with pytest.raises(ValueError, match=f"^{argument} must be .*got an integer of about 10\\*\\*400$"):
        discover_sensors(gpus=None, **kwargs)
