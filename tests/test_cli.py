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
    pytest.importorskip("matplotlib")
    path = write(tmp_path / "energy-records.jsonl", three_runs())
    code, out, _ = run(["report", str(tmp_path), "--equivalents", "--compare-zones", "FR,US-CA"], capsys)
    assert code == 0 and "mean ± standard error over the 3 runs" in out
    assert "miles driven" in out and "| FR |" in out and "| US-CA |" in out
    code, out, _ = run(["report", str(path), "--format", "latex"], capsys)
    assert code == 0 and r"\toprule" in out and r"\bottomrule" in out
    code, out, _ = run(["report", str(path), "--format", "json"], capsys)
    assert json.loads(out)["configurations"][0]["epochs"][0]["energy_kwh"]["mean"] == pytest.approx(0.0125)
    code, out, _ = run(["report", str(path), "--format", "csv"], capsys)
    assert out.splitlines()[0].startswith("configuration,run_id,attempt,epoch") and len(out.splitlines()) == 1 + 6
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
    code, out, err = run(["lifecycle", str(path), "--inferences", "10"], capsys)  # each run, said on stderr
    assert code == 0 and [line for line in out.splitlines() if line.startswith("run ")] == ["run seed-1", "run seed-2", "run seed-3"]
    assert "3 runs found" in err and "--run-id" in err
    code, err = exits(["lifecycle", str(path), "--inferences", "10", "--run-id", "seed-9"], capsys)
    assert code == 2 and "--run-id 'seed-9' is not among the runs found: seed-1, seed-2, seed-3" in err and "run_id=" not in err
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


# ------------------------------------------------------------------- log roots, bad input, zones
def lightning_like_root(tmp_path):
    """A log root as Lightning leaves it: records in version folders, a rank file beside one."""
    root = tmp_path / "lightning_logs"
    write(root / "version_0" / "energy" / "energy-records.jsonl", one_run("v0"))
    write(root / "version_1" / "energy-records.jsonl", one_run("v1", scale=1.5))
    write(root / "version_1" / "energy-records.rank1.jsonl", [rec("v1", "train", 1, 3600.0, 0, 99)])
    (root / "version_1" / "events.out.tfevents.1").write_bytes(b"not ours")
    return root


def test_report_of_a_log_root_finds_every_run_and_the_rank_files(tmp_path, capsys):
    root = lightning_like_root(tmp_path)
    code, out, err = run(["report", str(root), "--format", "json"], capsys)
    assert code == 0 and "2 runs found in 3 records file(s)" in err
    assert "v0: unknown framework, 2 training epoch(s), in " in err and str(root / "version_0" / "energy") in err
    totals = json.loads(out)["configurations"][0]["run_totals"]
    assert totals["v1"]["energy_kwh"] == pytest.approx((1.5 * (108000 + 7200 + 1800) + 3600) / KWH)  # rank 1's part too
    code, out, _ = run(["report", str(root / "version_1" / "energy-records.jsonl"), "--format", "json"], capsys)
    assert json.loads(out)["configurations"][0]["run_totals"]["v1"]["energy_kwh"] == pytest.approx(
        totals["v1"]["energy_kwh"])  # the file named, and the rank file beside it
    code, out, err = run(["report", str(root), "--run-id", "v0"], capsys)
    assert code == 0 and "# Energy report (1 run: v0)" in out and err == ""
    code, err = exits(["report", str(root), "--run-id", "v9"], capsys)
    assert code == 2 and "--run-id 'v9' is not among the runs found: v0, v1" in err
    code, err = exits(["report", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no such file or directory" in err
    (tmp_path / "nothing").mkdir()
    code, err = exits(["report", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no energy-records.jsonl under" in err


@pytest.mark.parametrize("bad", ['"0.001"', "null", "true", '[1]'])
@pytest.mark.parametrize("command", [["report"], ["lifecycle", "--inferences", "10"], ["whatif", "--intensity", "SERIES"]])
def test_a_record_of_the_wrong_type_is_one_line_naming_file_and_line(tmp_path, capsys, bad, command):
    path = write(tmp_path / "energy-records.jsonl", one_run())
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"energy_kwh": ', f'"energy_kwh": {bad}, "was": ', 1)
    path.write_text("\n".join(lines) + "\n")
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,g_per_kwh\n2026-11-23T00:00:00Z,100\n2026-11-24T00:00:00Z,100\n")
    argv = [command[0], str(tmp_path), *[str(series) if a == "SERIES" else a for a in command[1:]]]
    if command[0] == "whatif":
        assert main(argv) == 2
        err = capsys.readouterr().err
    else:
        code, err = exits(argv, capsys)
        assert code == 2
    assert f"{path}:3:" in err and "energy_kwh" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_report_plot_format_follows_the_extension(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = write(tmp_path / "energy-records.jsonl", one_run())
    for name, magic in (("p.pdf", b"%PDF-"), ("p.svg", b"<?xml"), ("p.png", b"\x89PNG")):
        code, _, _ = run(["report", str(path), "--plot", str(tmp_path / name)], capsys)
        assert code == 0 and (tmp_path / name).read_bytes()[:5].startswith(magic[:5])
    code, err = exits(["report", str(path), "--plot", str(tmp_path / "p.gif")], capsys)
    assert code == 2 and ".png, .pdf or .svg" in err


def test_zones_lists_and_searches(capsys):
    code, out, _ = run(["zones"], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) > 200
    assert any(line.startswith("--country FR ") and "France (FRA)" in line for line in lines)
    assert any(line.startswith("--zone US-CA ") for line in lines)
    assert any(line.startswith("--region gcp:europe-west1 ") for line in lines)
    code, out, _ = run(["zones", "--search", "belgium"], capsys)
    found = out.splitlines()
    assert code == 0 and any("--country BE " in line for line in found) and any("gcp:europe-west1" in line for line in found)
    assert all("belgium" in line.lower() for line in found)
    code, out, _ = run(["zones", "--search", "US-C", "--json"], capsys)
    assert {"flag": "--zone US-CA"}.items() <= next(z for z in json.loads(out) if z["flag"] == "--zone US-CA").items()
    code, err = exits(["zones", "--search", "Atlantis"], capsys)
    assert code == 2 and "no zone matches --search 'Atlantis'" in err


@pytest.mark.parametrize(
    "argv, says, not_said",
    [
        (["estimate", "--hours", "1", "--gpu", "T4", "--zone", "Atlantis"], "`greencallbacks zones --search TEXT` lists them",
         "list_zones()"),
        (["estimate", "--hours", "1", "--gpu", "Quantum 9000"], "or give --gpu-tdp)", "gpu_tdp_w"),
        (["estimate", "--hours", "1", "--gpu", "T4", "--zone", "CAMX"], "(e.g. --zone US-CA)", "zone='"),
        (["estimate", "--hours", "1", "--cpu-w-per-core", "5"], "--cpu-w-per-core needs --cpu-cores", "cpu_cores"),
        (["estimate", "--hours", "1", "--gpu", "T4", "--country", "FR", "--zone", "US-CA"], "got --country and --zone",
         "got country"),
    ],
)
def test_cli_errors_name_flags_not_python_arguments(argv, says, not_said, capsys):
    code, err = exits(argv, capsys)
    assert code == 2 and says in err and not_said not in err


def test_estimate_accepts_a_name_whose_matches_share_one_power(capsys):
    code, out, _ = run(["estimate", "--hours", "1", "--gpu", "A100 SXM", "--intensity", "100"], capsys)
    assert code == 0 and "400 W" in out and "A100 SXM" in out


@pytest.mark.slow
def test_report_lifecycle_and_whatif_of_a_real_lightning_log_root(tmp_path, capsys):
    """Three real fits logged by TensorBoard under one root: found, grouped, reported, priced."""
    import sys
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    pytest.importorskip("lightning")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    for epochs in (2, 2, 3):
        logger = L.loggers.TensorBoardLogger(tmp_path, name="lightning_logs")
        trainer = L.Trainer(max_epochs=epochs, logger=logger, callbacks=[EnergyCallback(country="FR")], **trainer_kwargs())
        trainer.fit(TinyModel(), *loaders())
    root = tmp_path / "lightning_logs"
    assert len(list(root.rglob("energy-records.jsonl"))) == 3 and list(root.rglob("events.out.tfevents.*"))

    code, out, err = run(["report", str(root), "--plot", str(tmp_path / "energy.pdf")], capsys)
    assert code == 0 and "3 runs found in 3 records file(s)" in err
    assert "## Configuration 1: lightning.pytorch" in out and "2 training epoch(s) of 32 samples" in out
    assert "## Configuration 2:" in out and "3 training epoch(s) of 32 samples" in out
    assert "mean ± standard error over the 2 runs" in out and "over 3 runs" not in out
    assert "The training (3 epochs of 32 samples) used" in out and "the whole run, including validation" in out
    assert (tmp_path / "energy.pdf").read_bytes()[:5] == b"%PDF-"

    code, out, err = run(["lifecycle", str(root), "--inferences", "100"], capsys)
    assert code == 0 and out.count("T  training:") == 3 and "choose one with --run-id" in err

    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,gco2eq_per_kwh\n" + "".join(
        f"{(now + timedelta(hours=h)).isoformat()},{100 + 50 * (h % 3)}\n" for h in range(-2, 30)))
    run_id = json.loads((root / "version_2" / "energy-summary.json").read_text())["run_id"]
    code, out, _ = run(["whatif", str(root), "--run-id", run_id, "--intensity", str(series), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["run_id"] == run_id and data["as_recorded"]["extrapolated"] is False
    assert data["series_name"] == "grid.csv (CSV)"


@pytest.mark.parametrize("argv", [
    [], ["nosuch"], ["report"], ["report", ".", "--format", "xml"], ["estimate"], ["estimate", "--hours", "-1"],
    ["lifecycle", ".", "--inferences", "abc"], ["zones", "--filter"], ["whatif"], ["whatif", ".", "--delay-hours", "x"],
])
def test_bad_arguments_are_one_line_and_exit_2(argv, capsys):
    """argparse's own usage block would come first: the one line says what is wrong and where help is."""
    code, err = exits(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ": error: " in err and "--help" in err and "usage:" not in err and "Traceback" not in err


def test_a_metric_prefix_that_is_no_string_is_one_line(tmp_path, capsys):
    """The optional ``metric_prefix`` (HF's eval_<data set>) is checked like every field: a string or null."""
    path = write(tmp_path / "energy-records.jsonl", one_run())
    lines = path.read_text().splitlines()
    assert '"metric_prefix": null' in lines[2]
    lines[2] = lines[2].replace('"metric_prefix": null', '"metric_prefix": 5', 1)
    path.write_text("\n".join(lines) + "\n")
    code, err = exits(["report", str(tmp_path)], capsys)
    assert code == 2 and f"{path}:3:" in err and "metric_prefix" in err and "a string or null" in err
    assert len(err.strip().splitlines()) == 1
