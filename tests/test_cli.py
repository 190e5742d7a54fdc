"""The command line: report, lifecycle and estimate, through ``main([...])``, errors included."""

from __future__ import annotations

import json
import struct

import pytest

from greencallbacks.cli import main
from greencallbacks.records import RecordWriter

from test_report import KWH, one_run, rec, three_runs


def write(path, records):
    writer = RecordWriter(path)
    for record in records:
        writer.write(record)
    return path


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def exits(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    return raised.value.code, capsys.readouterr().err


def test_report_formats_plot_equivalents_and_zones(tmp_path, capsys):
    path = write(tmp_path / "energy-records.jsonl", three_runs())
    code, out, _ = run(["report", str(tmp_path), "--equivalents", "--compare-zones", "FR,US-CA"], capsys)
    assert code == 0 and "mean ± standard error over the 3 runs" in out
    assert "miles driven" in out and "| FR |" in out and "| US-CA |" in out
    code, out, _ = run(["report", str(path), "--format", "latex"], capsys)
    assert code == 0 and r"\toprule" in out and r"\bottomrule" in out
    code, out, _ = run(["report", str(path), "--format", "json"], capsys)
    assert json.loads(out)["epochs"][0]["energy_kwh"]["mean"] == pytest.approx(0.0125)
    code, out, _ = run(["report", str(path), "--format", "csv"], capsys)
    assert out.splitlines()[0].startswith("run_id,epoch") and len(out.splitlines()) == 1 + 6
    png = tmp_path / "plot.png"
    code, _, err = run(["report", str(path), "--plot", str(png)], capsys)
    data = png.read_bytes()
    assert code == 0 and data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24])[0] > 0


def test_report_errors_exit_2_with_a_message(tmp_path, capsys):
    code, err = exits(["report", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 2 and "missing.jsonl" in err
    write(tmp_path / "energy-records.jsonl", one_run())
    code, err = exits(["report", str(tmp_path), "--compare-zones", "Atlantis"], capsys)
    assert code == 2 and "unknown zone 'Atlantis'" in err and "Traceback" not in err
    code, err = exits(["report", str(tmp_path), "--format", "docx"], capsys)
    assert code == 2 and "--format" in err


def test_lifecycle_prints_every_quantity(tmp_path, capsys):
    model = write(tmp_path / "model.jsonl", one_run("model"))
    trials = write(tmp_path / "trials.jsonl", [rec("t1", "train", 0, 7200.0, 10, 0), rec("t2", "train", 0, 3600.0, 10, 0)])
    code, out, _ = run(["lifecycle", str(model), "--inferences", "1e6", "--search", str(trials)], capsys)
    assert code == 0
    # T = 108 kJ over 2 epochs x 1000 samples = 54 J/sample; I from the test phase = 1800 J / 500 = 3.6 J/sample.
    assert "I  inference:  3.6 J/sample" in out and "(measured in test)" in out
    assert "T  training:   1.08e+05 J" in out and "per sample: 54 J" in out
    assert "a  overhead:   15" in out and "93.3%" in out
    assert "CT search:     1.08e+04 J" in out and "2 trials" in out
    lc_kwh = (108000 + 10800 + 1e6 * 3.6) / KWH
    assert f"LC for 1e+06 inferences: {lc_kwh:.4g} kWh" in out
    assert f"break-even e:  {(108000 + 10800) / 3.6:.4g} inferences" in out


def test_lifecycle_json_and_run_id(tmp_path, capsys):
    path = write(tmp_path / "runs.jsonl", three_runs())
    code, err = exits(["lifecycle", str(path), "--inferences", "10"], capsys)
    assert code == 2 and "run_id" in err
    code, out, _ = run(["lifecycle", str(path), "--inferences", "10", "--run-id", "seed-2", "--json"], capsys)
    data = json.loads(out)
    assert data["training_j"] == pytest.approx(108000 * 1.25) and data["inferences"] == 10
    code, err = exits(["lifecycle", str(path), "--inferences", "-5"], capsys)
    assert code == 2 and "--inferences" in err


def test_estimate_by_hand_and_json(capsys):
    from greencallbacks.carbon.intensity import country_intensity

    fr = country_intensity("FR").g_per_kwh
    code, out, _ = run(["estimate", "--gpu", "H100 SXM", "--gpus", "1", "--hours", "10", "--country", "FR", "--pue", "1.0",
                        "--compare", "DE,US-CA"], capsys)
    assert code == 0 and "Energy:   7 kWh" in out and f"{7 * fr / 1000:.4g} kg" in out and "DE" in out
    code, out, _ = run(["estimate", "--gpu", "T4", "--gpus", "2", "--hours", "3", "--cpu-cores", "4",
                        "--memory-gb", "16", "--intensity", "100", "--json"], capsys)
    data = json.loads(out)
    assert data["energy_kwh"] == pytest.approx(3 * (2 * 70 + 4 * 10 + 16 * 0.37) / 1000)
    assert data["co2eq_g"] == pytest.approx(data["energy_kwh"] * 100)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--hours", "-1"], "--hours"),
        (["--hours", "1", "--gpus", "0"], "--gpus"),
        (["--hours", "1", "--zone", "Atlantis"], "zone"),
        (["--hours", "1", "--usage", "2"], "usage"),
        (["--hours", "1", "--gpu", "Quantum 9000"], "gpu"),
    ],
)
def test_estimate_errors_exit_2_naming_the_argument(argv, says, capsys):
    base = [] if "--gpu" in argv else ["--gpu", "T4"]
    code, err = exits(["estimate", *base, *argv], capsys)
    assert code == 2 and says in err and "Traceback" not in err


def test_whatif_is_reachable_from_the_main_command(capsys):
    from greencallbacks.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["whatif", "--help"])
    assert exit_info.value.code == 0
    assert "--intensity" in capsys.readouterr().out
