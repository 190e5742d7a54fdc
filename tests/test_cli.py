"""The command line: report, lifecycle and estimate, through ``main([...])``, errors included."""

from __future__ import annotations

import json
import os
import re
import struct

import pytest

from greencallbacks.cli import main
from greencallbacks.records import RECORDS_FILE, RecordWriter, by_run
from greencallbacks.summaries import SUMMARY_FILE, kept_summary_path

from test_report import KWH, one_run, rec, three_runs


def write(path, records, finished=True):
    """``records`` written to ``path``; ``finished``: with the write-up each run leaves at its end
    (its energy-summary.json, kept under its id once another run ends there)."""
    writer = RecordWriter(path)
    for record in records:
        writer.write(record)
    if finished and path.name == RECORDS_FILE:
        for run, mine in by_run(records).items():
            summary = path.parent / SUMMARY_FILE
            if summary.exists():
                summary.rename(kept_summary_path(summary, json.loads(summary.read_text())["run_id"]))
            summary.write_text(json.dumps({"run_id": run, "energy_kwh": sum(r.energy_kwh for r in mine),
                                           "attempts": max(r.attempt for r in mine) + 1}))
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


@pytest.mark.parametrize("name, what", [("energy-open-run.0123456789ab.json", "a run's heartbeat"),
                                        ("energy-summary.json", "a run's summary"),
                                        ("energy-summary-seed-1.json", "a run's summary")])
def test_a_heartbeat_or_summary_named_for_records_is_said_as_such(tmp_path, capsys, name, what):
    """Read as records, its JSON gave "not a greencallbacks record: Extra data"."""
    (tmp_path / name).write_text(json.dumps({"run_id": "run", "energy_kwh": 1.0}, indent=2))
    for command in (["report"], ["lifecycle", "--inferences", "10"]):
        code, err = exits([command[0], str(tmp_path / name), *command[1:]], capsys)
        assert code == 2 and f"{name}: {what}, not its records: give the directory that holds them" in err, err
        assert len(err.strip().splitlines()) == 1 and "Extra data" not in err


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
    assert "V  rest of run: 9000 J" in out  # validation 2 x 3600 J and the test's 1800 J
    lc_kwh = (10800 + 108000 + 9000 + 1e6 * 3.6) / KWH
    assert f"LC for 1e+06 inferences: {lc_kwh:.4g} kWh" in out and "(LC = CT + T + V + e x I)" in out
    assert f"break-even e:  {(10800 + 108000 + 9000) / 3.6:.4g} inferences" in out


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
    code, out, _ = run(["zones", "--search", "england"], capsys)  # a name --country takes, not the table's
    assert code == 0 and out.splitlines()[0].startswith("--country GB ")
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
    assert re.search(r"The training \(3 epochs of 32 samples in \d+ steps each\) used", out) and "the whole run, including validation" in out
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


# ------------------------------------------------------- copies, life cycles, odd input, pipes
def test_records_found_twice_are_counted_once_and_conflicting_copies_refused(tmp_path, capsys):
    """A copied run directory (`cp -r` before an experiment) holds the same records: summed once, with a warning."""
    import shutil
    import warnings

    from greencallbacks.runs import load

    write(tmp_path / "logs" / "run" / "energy-records.jsonl", one_run("r1"))
    shutil.copytree(tmp_path / "logs" / "run", tmp_path / "logs" / "run-backup")
    code, out, err = run(["report", str(tmp_path / "logs"), "--format", "json"], capsys)
    once = sum(r.energy_kwh for r in one_run("r1"))
    assert code == 0 and json.loads(out)["configurations"][0]["total"]["energy_kwh"]["mean"] == pytest.approx(once)
    assert len(err.strip().splitlines()) == 1 and "warning: records found more than once" in err and "run-backup" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load(tmp_path / "logs")
    assert len(loaded.records) == len(one_run("r1")) and len(caught) == 1
    # A rank's own records of a failed distributed run share seq with rank 0's: parts, not copies.
    (tmp_path / "logs" / "run" / "energy-records.rank1.jsonl").write_text(
        json.dumps(rec("r1", "train", 1, 3600.0, 0, 2).to_dict()) + "\n")
    assert sum(r.energy_kwh for r in load(tmp_path / "logs" / "run").records) == pytest.approx(once + 3600.0 / KWH)
    # The same run, attempt and seq with other contents: two histories, not a copy; which one is meant?
    (tmp_path / "logs" / "run" / "energy-records.rank1.jsonl").unlink()
    (tmp_path / "logs" / "run-backup" / "energy-records.jsonl").unlink()
    write(tmp_path / "logs" / "run-backup" / "energy-records.jsonl", one_run("r1", scale=2.0))
    code, err = exits(["report", str(tmp_path / "logs")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "logs" / "run" / "energy-records.jsonl") in err and "run-backup" in err
    assert "different contents" in err


def test_lifecycle_of_a_log_root_skips_a_run_that_trained_nothing(tmp_path, capsys):
    write(tmp_path / "trained" / "energy-records.jsonl", one_run("trained"))
    write(tmp_path / "evaluated" / "energy-records.jsonl", [rec("e", "test", None, 1800.0, 500, 0)])
    code, out, err = run(["lifecycle", str(tmp_path), "--inferences", "10"], capsys)
    assert code == 0 and "run trained" in out and out.count("T  training:") == 1
    assert "run e has no training records (no training epoch: evaluation or prediction alone, or a tuner's trials): skipped" in err
    code, out, _ = run(["lifecycle", str(tmp_path), "--inferences", "10", "--json"], capsys)
    assert [d["run_id"] for d in json.loads(out)] == ["trained"]
    code, err = exits(["lifecycle", str(tmp_path), "--inferences", "10", "--run-id", "e"], capsys)
    assert code == 2 and "run 'e' has no training records" in err  # named: still an error
    code, err = exits(["lifecycle", str(tmp_path / "evaluated"), "--inferences", "10"], capsys)
    assert code == 2 and "no run with training records" in err


def test_lifecycle_search_leaves_out_the_trained_run(tmp_path, capsys):
    """The trained model is one of the sweep's trials, its records under the same root: T, not CT too."""
    for trial, scale in (("t1", 1.0), ("t2", 2.0), ("best", 3.0)):
        write(tmp_path / "sweep" / trial / "energy-records.jsonl", one_run(trial, scale=scale))
    code, out, _ = run(["lifecycle", str(tmp_path / "sweep"), "--run-id", "best", "--search", str(tmp_path / "sweep"),
                        "--inferences", "0", "--json"], capsys)
    data = json.loads(out)
    whole = sum(r.energy_kwh for r in one_run("x")) * KWH
    assert data["search_trials"] == 2 and data["search_j"] == pytest.approx(3.0 * whole)
    assert ("the trained run best is among the search records: its training phases are T, the rest of it V, "
            "none of it in CT") in data["notes"]
    assert data["lifecycle_energy_kwh"] * KWH == pytest.approx((1.0 + 2.0 + 3.0) * whole)  # the sweep, each run whole


def test_zones_lists_the_world_average_with_the_flag_that_takes_it(capsys):
    code, out, _ = run(["zones", "--search", "world"], capsys)
    flag = out.splitlines()[0].split()[:2]
    assert code == 0 and flag == ["--zone", "world"]
    code, out, _ = run(["estimate", "--hours", "1", "--gpu", "T4", *flag], capsys)
    assert code == 0 and "world average" in out


def test_near_equal_repeats_are_reported(tmp_path, capsys):
    """Two runs agreeing to 8 digits: the error's rounding recursed without end (RecursionError)."""
    write(tmp_path / "a.jsonl", one_run("a"))
    write(tmp_path / "b.jsonl", one_run("b", scale=1.0 + 1e-8))
    code, out, _ = run(["report", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], capsys)
    assert code == 0 and "| 0 | 2.00 ± 0 | 10.0 ± 5.0e-08 | 5.00 ± 2.5e-08 | 36.0 ± 1.8e-07 |" in out


def test_an_internal_error_is_one_line_and_exit_1(monkeypatch, capsys):
    import greencallbacks.cli as cli

    def broken(args):
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr(cli, "cmd_zones", broken)
    code, err = exits(["zones"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "greencallbacks zones: internal error: RuntimeError: something we did not foresee" in err


@pytest.mark.parametrize("text", ["0", "0.00", "0e0", "-0", "2.5"])
def test_zero_is_a_number_greater_or_equal_to_zero_however_written(text, tmp_path, capsys):
    code, _, _ = run(["estimate", "--hours", "1", "--gpu", "T4", "--memory-gb", text], capsys)
    assert code == 0
    if not float(text).is_integer():
        return  # --inferences is a count: a fractional one is refused (see below)
    path = write(tmp_path / "energy-records.jsonl", one_run())
    code, out, _ = run(["lifecycle", str(path), "--inferences", text, "--json"], capsys)
    assert code == 0 and json.loads(out)["inferences"] == float(text)


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "x"])
def test_a_negative_or_non_finite_count_is_refused(text, capsys):
    code, err = exits(["estimate", "--hours", "1", "--gpu", "T4", "--memory-gb", text], capsys)
    assert code == 2 and "--memory-gb: must be a number >= 0" in err


def _bad_records(tmp_path, name):
    good = one_run()[0].to_dict()
    lines = {
        "binary": bytes(range(128, 256)) * 4,
        "no_run_id": json.dumps({k: v for k, v in good.items() if k != "run_id"}) + "\n",
        "nameless_component": json.dumps(dict(good, components=[{"energy_j": 1.0, "method": "counter"}])) + "\n",
        "one_garbage_line": '{"hello": [1, 2\n',
        "nan": json.dumps(dict(good, energy_kwh=float("nan"))) + "\n",
        "infinity": json.dumps(dict(good, co2eq_g=float("inf"))) + "\n",
        "huge": json.dumps(good).replace('"duration_s": 2.0', '"duration_s": 1e999') + "\n",
        "negative_energy": json.dumps(dict(good, energy_kwh=-1.0)) + "\n",
        "negative_samples": json.dumps(dict(good, samples=-5)) + "\n",
        "array": "[1, 2, 3]\n",
        "null": "null\n",
        "string": '"energy"\n',
    }[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(lines if isinstance(lines, bytes) else lines.encode())
    return path


@pytest.mark.parametrize("name, says", [
    ("binary", "not a greencallbacks records file (not UTF-8 text"),
    ("no_run_id", "field 'run_id' is missing"),
    ("nameless_component", "component 0 of field 'components' needs a string 'name'"),
    ("one_garbage_line", "not a greencallbacks record: Expecting"),
    ("nan", "field 'energy_kwh' is nan, not a finite number"),
    ("infinity", "field 'co2eq_g' is inf, not a finite number"),
    ("huge", "field 'duration_s' is inf, not a finite number"),
    ("negative_energy", ":1: not a greencallbacks record: field 'energy_kwh' is -1.0, not a number >= 0"),
    ("negative_samples", ":1: not a greencallbacks record: field 'samples' is -5, not a number >= 0"),
    ("array", ":1: not a greencallbacks record: not a JSON object (got an array)"),
    ("null", ":1: not a greencallbacks record: not a JSON object (got null)"),
    ("string", ":1: not a greencallbacks record: not a JSON object (got a string)"),
])
def test_bad_records_are_one_line_naming_the_file(name, says, tmp_path, capsys):
    path = _bad_records(tmp_path, name)
    code, err = exits(["report", str(path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and says in err and "--run-id" not in err


def _series_covering_one_run(tmp_path):
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,g_per_kwh\n2026-11-23T00:00:00Z,100\n2026-11-24T00:00:00Z,100\n")
    return series


def _exit_code_and_err(argv, capsys):
    """whatif's own main returns its status; the other sub-commands exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "\n  \n\n"], ids=["empty", "blank lines"])
@pytest.mark.parametrize("command", [
    ["report"], ["lifecycle", "--inferences", "10"], ["whatif", "--intensity", "SERIES"],
    ["whatif", "--intensity", "SERIES", "--json"], ["whatif", "--intensity", "SERIES", "--plot", "PLOT"],
], ids=["report", "lifecycle", "whatif", "whatif --json", "whatif --plot"])
def test_a_records_file_without_records_is_refused_by_every_command(tmp_path, capsys, content, command):
    if "--plot" in command:
        pytest.importorskip("matplotlib")  # --plot asks for matplotlib (the [plot] extra) before it looks at the path
    path = tmp_path / "energy-records.jsonl"
    path.write_text(content)
    plot = tmp_path / "whatif.png"
    fill = {"SERIES": str(_series_covering_one_run(tmp_path)), "PLOT": str(plot)}
    code, err = _exit_code_and_err([command[0], str(tmp_path), *[fill.get(a, a) for a in command[1:]]], capsys)
    assert code == 2 and err == f"greencallbacks {command[0]}: error: no records in {path}\n", err
    assert capsys.readouterr().out == "" and not plot.exists()


def test_lifecycle_refuses_search_records_without_a_record(tmp_path, capsys):
    write(tmp_path / "trained" / "energy-records.jsonl", one_run("trained"))
    empty = tmp_path / "search" / "energy-records.jsonl"
    empty.parent.mkdir()
    empty.write_text("\n")
    code, err = exits(["lifecycle", str(tmp_path / "trained"), "--inferences", "10", "--search", str(empty)], capsys)
    assert code == 2 and err == f"greencallbacks lifecycle: error: no records in {empty}\n", err


@pytest.mark.parametrize("command", [
    ["report", "PATH"], ["lifecycle", "PATH", "--inferences", "10"],
    ["lifecycle", "GOOD", "--inferences", "10", "--search", "PATH"], ["whatif", "PATH", "--intensity", "SERIES"],
], ids=["report", "lifecycle", "lifecycle --search", "whatif"])
@pytest.mark.parametrize("special, kind", [("/dev/null", "a character device")])
def test_a_records_path_that_is_no_file_or_directory_is_said_as_what_it_is(tmp_path, capsys, command, special, kind):
    good = write(tmp_path / "good" / "energy-records.jsonl", one_run())
    fill = {"PATH": str(special), "GOOD": str(good), "SERIES": str(_series_covering_one_run(tmp_path))}
    code, err = _exit_code_and_err([fill.get(a, a) for a in command], capsys)
    assert code == 2 and err == f"greencallbacks {command[0]}: error: {special}: not a regular file or directory ({kind})\n"


def test_host_share_without_embodied_host_is_refused_naming_both(capsys):
    code, err = exits(["estimate", "--hours", "1", "--gpu", "T4", "--host-share", "0.5"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--host-share needs --embodied-host" in err
    code, out, _ = run(["estimate", "--hours", "1", "--gpu", "T4", "--embodied-host", "server", "--host-share", "0.5"],
                       capsys)
    assert code == 0 and "embodied" in out


def test_host_share_is_named_as_its_flag(capsys):
    code, err = exits(["estimate", "--hours", "1", "--gpu", "T4", "--embodied-host", "server", "--host-share", "2"], capsys)
    assert code == 2 and "--host-share must be at most 1" in err and "host_share" not in err


def _into_a_closed_pipe(args):
    """Run the command with its stdout a pipe nobody reads (`... | head` once head has exited)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "greencallbacks", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    from datetime import datetime, timedelta, timezone

    path = write(tmp_path / "energy-records.jsonl", one_run())
    start = datetime(2026, 11, 23, 8, tzinfo=timezone.utc)
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,g_per_kwh\n" + "".join(f"{(start + timedelta(hours=h)).isoformat()},{100 + h}\n"
                                                        for h in range(12)))
    for args in (["report", str(path)], ["zones"], ["whatif", str(path), "--intensity", str(series)]):
        code, err = _into_a_closed_pipe(args)
        assert (code, err) == (141, ""), args  # as a shell reports cat or grep stopped by SIGPIPE


def test_the_library_names_a_named_pipe_in_a_directory_as_one(tmp_path):
    from greencallbacks.runs import load

    fifo = tmp_path / "energy-records.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load(tmp_path / "missing")
    # Found in a directory walked: it hung the report, waiting for a writer.
    with pytest.raises(ValueError, match=r"energy-records.jsonl: not a records file \(a named pipe\)"):
        load(tmp_path)


@pytest.mark.parametrize("flags, says", [
    (["report", "--compare-zones", "XX"], "greencallbacks report: error: unknown zone 'XX'"),
    (["whatif", "--intensity", "MISSING"], "greencallbacks whatif: error: series file"),
    (["whatif", "--intensity", "SERIES", "--window-h", "-3"], "greencallbacks whatif: error: --window-h must be"),
    (["whatif", "--intensity", "SERIES", "--threshold", "0"], "greencallbacks whatif: error: --threshold must be"),
    (["whatif", "--intensity", "SERIES", "--zones", "XX"], "greencallbacks whatif: error: unknown zone 'XX'"),
    (["lifecycle", "--inferences", "5", "--search", "EMPTY"], "greencallbacks lifecycle: error: no energy-records"),
], ids=["report zones", "whatif series", "whatif window", "whatif threshold", "whatif zones", "lifecycle search"])
def test_a_bad_flag_is_one_line_even_where_several_runs_would_be_listed(tmp_path, capsys, flags, says):
    write(tmp_path / "runs" / "energy-records.jsonl", three_runs())
    (tmp_path / "empty").mkdir()
    fill = {"SERIES": str(_series_covering_one_run(tmp_path)), "MISSING": str(tmp_path / "missing.csv"),
            "EMPTY": str(tmp_path / "empty")}
    code, err = _exit_code_and_err([flags[0], str(tmp_path / "runs"), *[fill.get(a, a) for a in flags[1:]]], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(says), err
    assert "run seed-" not in err  # a flag's error is the flag's, not one run's


def test_an_error_of_one_of_several_runs_is_one_line_and_success_lists_them(tmp_path, capsys):
    evaluated = [rec("evaluated", "test", None, 1800.0, 500, 0), rec("predicted", "predict", None, 900.0, 500, 0)]
    write(tmp_path / "untrained" / "energy-records.jsonl", evaluated)
    code, err = _exit_code_and_err(["lifecycle", str(tmp_path / "untrained"), "--inferences", "5"], capsys)
    assert code == 2 and err == "greencallbacks lifecycle: error: no run with training records among evaluated, predicted\n"
    write(tmp_path / "energy-records.jsonl", three_runs() + evaluated[:1])
    code, out, err = run(["lifecycle", str(tmp_path / "energy-records.jsonl"), "--inferences", "5"], capsys)
    assert code == 0 and "4 runs found" in err and "run evaluated has no training records" in err and "run seed-1" in out


def _warn_from(filename, category, text):
    """A command that warns as if from code in ``filename`` (another library's, or greencallbacks')."""
    import warnings

    def command(args):
        warnings.warn_explicit(text, category, filename, 1, module=os.path.basename(filename), registry={})
        return 0

    return command


def test_only_greencallbacks_warnings_speak_as_greencallbacks(monkeypatch, capsys):
    import sys as sys_
    import warnings

    from greencallbacks import cli
    from greencallbacks.meter import EnergyWarning

    monkeypatch.setattr(sys_, "warnoptions", [])
    said = {}
    for name, (filename, category, text) in {
        "ours": (__file__, EnergyWarning, "greencallbacks: the sensor failed"),
        "ours, plain": (cli.__file__, UserWarning, "skipped a torn last line"),
        "theirs": (pytest.__file__, UserWarning, "a dependency's remark"),
        "their deprecation": (pytest.__file__, FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated"),
    }.items():
        monkeypatch.setattr(cli, "cmd_zones", _warn_from(filename, category, text))
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            assert main(["zones"]) == 0
        said[name] = capsys.readouterr().err
    assert said["ours"] == "greencallbacks zones: warning: the sensor failed\n"
    assert said["ours, plain"] == "greencallbacks zones: warning: skipped a torn last line\n"
    assert said["theirs"] == "pytest: UserWarning: a dependency's remark\n"
    assert said["their deprecation"] == ""  # addressed to the code that calls pytest, not to the command's user
    monkeypatch.setattr(sys_, "warnoptions", ["default"])  # python -W default: every warning asked for
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["zones"]) == 0
    assert capsys.readouterr().err == "pytest: FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated\n"


def test_zone_help_offers_only_zones_that_work(capsys):
    with pytest.raises(SystemExit):
        main(["estimate", "--help"])
    out = capsys.readouterr().out
    assert "US-CA" in out and "CAMX" not in out and "eGRID subregion (" not in out
    code, out, _ = run(["estimate", "--hours", "1", "--gpu", "T4", "--zone", "US-CA"], capsys)
    assert code == 0 and "US-CA" in out


@pytest.mark.parametrize("argv, says", [
    # A billion GPUs hung the command (a dict built per GPU): refused at once, naming the flag.
    (["--gpu", "H100 SXM", "--gpus", "1000000000"], "error: --gpus must be an integer from 1 to 1,000,000, got 1000000000"),
    # inf kWh printed with exit 0, and Infinity in the JSON (no JSON at all).
    # (--gpu-tdp is capped at 1e6 W: the hours carry the rest of the overflow.)
    (["--gpu-tdp", "1e6", "--gpus", "10", "--hours", "1e302"], "--hours, --gpus and --gpu-tdp are too large together"),
    (["--gpu-tdp", "1e6", "--hours", "1e303", "--json"], "--hours and --gpu-tdp are too large together"),
    (["--gpu", "H100 SXM", "--hours", "1e308"], "--hours is too large"),  # was the internal duration_s
    # Said of no GPU, they were ignored: the estimate looked as if they counted.
    (["--usage", "0.5", "--cpu-cores", "4"], "error: --usage needs --gpu or --gpu-tdp (they describe the GPUs)"),
    (["--gpus", "4", "--cpu-cores", "4"], "error: --gpus needs --gpu or --gpu-tdp"),
    (["--gpus", "1", "--usage", "1", "--memory-gb", "8"], "error: --gpus and --usage need --gpu or --gpu-tdp"),
])
def test_estimate_refuses_what_it_cannot_count_in_one_line_naming_the_flags(argv, says, capsys):
    hours = [] if "--hours" in argv else ["--hours", "1"]
    code, err = exits(["estimate", *hours, *argv], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "duration_s" not in err and capsys.readouterr().out == ""


def _plot_cases(tmp_path):
    (tmp_path / "taken.png").mkdir()
    return [
        (str(tmp_path / "missing" / "p.png"), "its directory"),
        (str(tmp_path / "taken.png"), "is a directory"),
        (str(tmp_path / "new.png") + "/", "ends in a slash"),  # was written as a file called new.png
    ]


@pytest.mark.parametrize("case", [0, 1, 2])
@pytest.mark.parametrize("command", [["report"], ["whatif", "--intensity", "SERIES"]], ids=["report", "whatif"])
def test_a_plot_file_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, command, case):
    """The whole report was printed, then '[Errno 2] ...' without the flag, exit 2; a trailing slash
    wrote a file of that name."""
    pytest.importorskip("matplotlib")  # --plot asks for matplotlib (the [plot] extra) before it looks at the path
    write(tmp_path / "energy-records.jsonl", one_run())
    plot, says = _plot_cases(tmp_path)[case]
    fill = {"SERIES": str(_series_covering_one_run(tmp_path))}
    argv = [command[0], str(tmp_path / "energy-records.jsonl"), *[fill.get(a, a) for a in command[1:]], "--plot", plot]
    code, err = _exit_code_and_err(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"error: --plot {plot!r}" in err and says in err, err
    assert capsys.readouterr().out == "" and not (tmp_path / "new.png").exists()


@pytest.mark.parametrize("argv, says", [
    (["--zones", ",,"], "argument --zones: must be a comma-separated list of zones, got ',,'"),
    (["--zones", ""], "argument --zones: must be a comma-separated list of zones, got ''"),
    (["--threshold", "1e9"], "--threshold must be a number of gCO2eq/kWh > 0 and at most 2000, got 1000000000.0"),
])
def test_whatif_refuses_an_empty_zone_list_and_a_threshold_no_intensity_reaches(tmp_path, capsys, argv, says):
    """As report's --compare-zones and every intensity (at most 2000 g/kWh) are: both were accepted."""
    path = write(tmp_path / "energy-records.jsonl", one_run())
    code, err = _exit_code_and_err(["whatif", str(path), "--intensity", str(_series_covering_one_run(tmp_path)), *argv],
                                   capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text, says", [
    ("1.5", "argument --inferences: must be a whole number >= 0 (a count), got '1.5'"),
    ("1e308", "--inferences 1e+308 is too large: the life cycle's energy or CO2eq overflows"),
])
def test_lifecycle_inferences_is_a_count_of_a_finite_cost(tmp_path, capsys, text, says):
    """1.5 inferences were priced as given; a count past the largest float printed inf."""
    path = write(tmp_path / "energy-records.jsonl", one_run())
    code, err = exits(["lifecycle", str(path), "--inferences", text], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    code, out, _ = run(["lifecycle", str(path), "--inferences", "1e6", "--json"], capsys)
    assert code == 0 and json.loads(out)["inferences"] == 1_000_000


# A path even root cannot write: /sys refuses to make files or directories (EPERM/EACCES), and
# permission bits would not tell (root passes them).
UNWRITABLE = "/sys/greencallbacks-test"
needs_sys = pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's /sys")


@needs_sys
@pytest.mark.parametrize("argv, flag", [
    (["demo", "--epochs", "1", "--out", UNWRITABLE], "--out"),
    (["demo", "--epochs", "1", "--out", UNWRITABLE + "/a/b"], "--out"),
    (["report", "RECORDS", "--plot", UNWRITABLE + ".png"], "--plot"),
])
def test_a_path_that_cannot_be_written_is_refused_naming_its_flag(tmp_path, capsys, argv, flag):
    """Said '[Errno 1] Operation not permitted' and named no flag (demo after building its model,
    report after printing the whole report)."""
    if flag == "--plot":
        pytest.importorskip("matplotlib")  # --plot asks for matplotlib (the [plot] extra) before it looks at the path
    records = write(tmp_path / "energy-records.jsonl", one_run())
    argv = [str(records) if a == "RECORDS" else a for a in argv]
    code, err = exits(argv, capsys)
    path = argv[argv.index(flag) + 1]
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"error: {flag} {path!r} cannot be written" in err and "Errno" not in err, err
    assert capsys.readouterr().out == ""


@needs_sys
def test_whatif_plot_that_cannot_be_written_is_refused_naming_its_flag(tmp_path, capsys):
    """whatif --plot read permission bits (root passes them): '[Errno 13] Permission denied' at the end."""
    pytest.importorskip("matplotlib")  # --plot asks for matplotlib (the [plot] extra) before it looks at the path
    write(tmp_path / "energy-records.jsonl", one_run())
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,g_per_kwh\n2026-11-23T00:00:00Z,100\n2026-11-24T00:00:00Z,100\n")
    assert main(["whatif", str(tmp_path), "--intensity", str(series), "--plot", UNWRITABLE + ".png"]) == 2
    captured = capsys.readouterr()
    assert f"--plot {UNWRITABLE + '.png'!r} cannot be written" in captured.err and "Errno" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_demo_out_that_is_a_file_names_the_flag(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    code, err = exits(["demo", "--epochs", "1", "--out", str(tmp_path / "taken")], capsys)
    assert code == 2 and f"error: --out {str(tmp_path / 'taken')!r} is a file, not a directory" in err, err
    assert "output_dir" not in err


def test_the_writable_check_leaves_nothing_behind(tmp_path):
    """demo --out is tried by making it (and its parents) and a file in it, then undone: a run
    refused for another setting afterwards must leave no empty directory."""
    from greencallbacks.cli import _check_writable_directory
    from greencallbacks.report.plot import check_plot_path

    _check_writable_directory("--out", tmp_path / "a" / "b")
    pytest.importorskip("matplotlib")  # check_plot_path asks for it first
    check_plot_path(tmp_path / "p.png", "--plot")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept.png").write_bytes(b"old")
    check_plot_path(tmp_path / "kept.png", "--plot")
    assert (tmp_path / "kept.png").read_bytes() == b"old"  # a file there is neither emptied nor removed


@pytest.mark.parametrize("command", ["demo", "estimate"])
def test_pue_help_says_the_range_that_is_accepted(command, capsys):
    """It said '(>= 1)' while 3.5 was refused (pue is in [1, 3])."""
    from greencallbacks.carbon.pue import MAX_PUE, MIN_PUE

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"from {MIN_PUE:g} (IT energy only) to {MAX_PUE:g}" in text and "(>= 1)" not in text
    code, err = exits(["estimate", "--hours", "1", "--gpu", "T4", "--pue", "3.5"], capsys)
    assert code == 2 and "pue" in err


@pytest.mark.parametrize("flag, bound", [("--cpu-tdp", "10,000"), ("--gpu-tdp", "1,000,000")])
def test_estimate_caps_watts_as_the_callbacks_do(flag, bound, capsys):
    """--cpu-tdp 1e9 was accepted (the callbacks' cpu_tdp_w stops at 10,000 W; a declared device's
    power at 1,000,000 W)."""
    code, err = exits(["estimate", "--hours", "1", flag, "1e9"], capsys)
    assert code == 2 and f"argument {flag}: must be a positive number of watts up to {bound}, got '1e9'" in err, err
    code, out, _ = run(["estimate", "--hours", "1", flag, bound.replace(",", ""), "--json"], capsys)
    assert code == 0 and json.loads(out)["energy_kwh"] > 0


def test_records_clashing_in_content_name_the_records_field_not_the_flag(tmp_path, capsys):
    """'(two runs given one --run-id, ...)' blamed a flag nobody passed: the records' run_id did it."""
    write(tmp_path / "a" / "energy-records.jsonl", one_run("r1"))
    write(tmp_path / "b" / "energy-records.jsonl", one_run("r1", scale=2.0))
    code, err = exits(["report", str(tmp_path)], capsys)
    assert code == 2 and "different contents" in err and "records carry the same 'run_id'" in err
    assert "--run-id" not in err.split("(see")[0], err


def test_one_run_of_a_shared_file_is_reported_past_another_runs_bad_line(tmp_path, capsys):
    """--run-id decodes that run's lines alone: another run's damaged line, which refuses the whole
    file to a report of every run, does not stand in the way of this one's (nor its cost, in a
    sweep's directory)."""
    path = write(tmp_path / "runs.jsonl", three_runs())
    with open(path, "a") as file:
        line = json.dumps({**rec("seed-3", "train", 5, 100.0, 10, 99).to_dict(), "phase": "bogus"})
        file.write(line + "\n")
    code, err = exits(["report", str(path)], capsys)
    assert code == 2 and "phase" in err
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,g_per_kwh\n2026-11-23T00:00:00Z,100\n2026-11-24T00:00:00Z,100\n")
    for command in (["report"], ["lifecycle", "--inferences", "10"], ["whatif", "--intensity", str(series)]):
        code, out, _ = run([command[0], str(path), *command[1:], "--run-id", "seed-2"], capsys)
        assert code == 0 and out.strip()
    code, err = exits(["report", str(path), "--run-id", "seed-9"], capsys)
    assert code == 2 and "--run-id 'seed-9' is not among the runs found: seed-1, seed-2, seed-3" in err


def test_a_special_file_given_as_a_series_is_refused_in_one_line(tmp_path, capsys):
    """whatif read /dev/zero whole until the kernel killed it (21.6 GB); a device is said as one."""
    path = write(tmp_path / "energy-records.jsonl", one_run())
    code, err = _exit_code_and_err(["whatif", str(path), "--intensity", "/dev/null"], capsys)
    assert (code, err) == (2, "greencallbacks whatif: error: series file '/dev/null': not a regular file or "
                              "pipe (a character device)\n")


def test_a_log_root_follows_symlinked_run_directories_once(tmp_path, capsys):
    """Path.rglob (Python < 3.13) left out a run directory linked into the root, and found nothing
    under a root that is itself a link to the logs ("no energy-records.jsonl under ..."), exit 0."""
    write(tmp_path / "logs" / "a" / "energy-records.jsonl", one_run("run-a"))
    write(tmp_path / "elsewhere" / "b" / "energy-records.jsonl", one_run("run-b"))
    (tmp_path / "logs" / "b").symlink_to(tmp_path / "elsewhere" / "b")
    (tmp_path / "logs" / "a" / "up").symlink_to(tmp_path / "logs")  # a loop: each directory is read once
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "logs").symlink_to(tmp_path / "logs")
    for root in (tmp_path / "logs", tmp_path / "root"):
        code, out, err = run(["report", str(root), "--format", "json"], capsys)
        assert code == 0 and "2 runs found in 2 records file(s)" in err, err
        assert sorted(run for group in json.loads(out)["configurations"] for run in group["runs"]) == ["run-a", "run-b"]


def test_an_unreadable_directory_under_a_log_root_is_warned_of_by_name(tmp_path, capsys):
    write(tmp_path / "logs" / "a" / "energy-records.jsonl", one_run("run-a"))
    hidden = tmp_path / "logs" / "b"
    write(hidden / "energy-records.jsonl", one_run("run-b"))
    hidden.chmod(0)
    try:
        if os.access(hidden, os.R_OK):
            pytest.skip("this user reads a directory whatever its mode (root)")
        code, out, err = run(["report", str(tmp_path / "logs")], capsys)
    finally:
        hidden.chmod(0o755)
    assert code == 0 and "run-a" in out
    assert err == (f"greencallbacks report: warning: could not read 1 directory under {tmp_path / 'logs'}, so any "
                   f"records there are left out: {hidden}\n"), err


def _series_of(tmp_path, g_per_kwh):
    series = tmp_path / "grid.csv"
    series.write_text(f"timestamp,g_per_kwh\n2026-11-23T00:00:00Z,{g_per_kwh}\n2026-11-24T00:00:00Z,{g_per_kwh}\n")
    return series


def test_whatif_json_writes_null_for_what_is_no_finite_number(tmp_path, capsys):
    """A saving of -inf % (the run priced at a subnormal intensity here, at 56 g/kWh in FR) was
    written as -Infinity, which no standard JSON reader takes."""
    path = write(tmp_path / "energy-records.jsonl", one_run())
    code, out, _ = run(["whatif", str(path), "--intensity", str(_series_of(tmp_path, "1e-310")), "--zones", "FR",
                        "--json"], capsys)

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    document = json.loads(out, parse_constant=refuse)
    assert code == 0 and document["regions"][0]["saving_pct"] is None


def test_a_run_id_whose_lines_are_all_torn_is_said_so(tmp_path, capsys):
    """It was "--run-id 'X' is not among the runs found: X, ...": the ids are read without decoding
    the lines, so a torn line's id was among them."""
    write(tmp_path / "a" / "energy-records.jsonl", one_run("whole"))
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(one_run("cut")[0].to_dict())[:100])
    code, err = exits(["report", str(tmp_path / "a"), str(torn), "--run-id", "cut"], capsys)
    assert code == 2 and err == (
        f"greencallbacks report: error: --run-id 'cut': none of its records could be read (its lines in {torn} are "
        "torn, skipped)\n"), err
    code, err = exits(["report", str(tmp_path / "a"), str(torn), "--run-id", "other"], capsys)
    assert code == 2 and err == "greencallbacks report: error: --run-id 'other' is not among the runs found: cut, whole\n"


def test_a_file_of_one_torn_line_is_one_error_line_that_says_why_it_holds_no_record(tmp_path, capsys):
    """It was two lines: the torn line's warning, then "no records in ..." without the reason."""
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(one_run("cut")[0].to_dict())[:100])
    code, err = exits(["report", str(torn)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"greencallbacks report: error: no records in {torn} ({torn}:1: skipped a torn last line ("), err
    code, out, err = run(["report", str(torn), str(write(tmp_path / "a" / "energy-records.jsonl", one_run("whole")))],
                         capsys)
    assert code == 0 and f"warning: {torn}:1: skipped a torn last line" in err  # a file with records: still said


@pytest.mark.parametrize("argv", [
    ["report", ""], ["report", "GOOD", ""], ["report", "GOOD", "--plot", ""], ["demo", "--out", ""],
    ["lifecycle", "", "--inferences", "1"], ["lifecycle", "GOOD", "--inferences", "1", "--search", ""],
    ["whatif", "", "--intensity", "SERIES"], ["whatif", "GOOD", "--intensity", ""],
    ["whatif", "GOOD", "--intensity", "SERIES", "--plot", ""],
], ids=["report", "report 2nd", "report --plot", "demo --out", "lifecycle", "lifecycle --search", "whatif",
        "whatif --intensity", "whatif --plot"])
def test_an_empty_path_is_refused_by_every_path_argument(tmp_path, capsys, monkeypatch, argv):
    """Path("") is Path("."): `report ""` reported the current directory, `demo --out ""` trained
    into it, while `whatif --intensity ""` was refused."""
    monkeypatch.chdir(write(tmp_path / "energy-records.jsonl", one_run()).parent)
    fill = {"GOOD": str(tmp_path), "SERIES": str(_series_covering_one_run(tmp_path))}
    before = sorted(os.listdir(tmp_path))
    code, err = _exit_code_and_err([fill.get(a, a) for a in argv], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "must be a path, got '' (an empty path)" in err, err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


@pytest.mark.parametrize("flags, says", [
    (["--equivalents"], "--equivalents is not in --format csv"),
    (["--compare-zones", "FR"], "--compare-zones is not in --format csv"),
    (["--compare-zones", "FR", "--equivalents"], "--compare-zones and --equivalents are not in --format csv"),
])
def test_report_csv_refuses_what_it_has_no_place_for(tmp_path, capsys, flags, says):
    """They were dropped in silence: the CSV is the table of epochs alone."""
    path = write(tmp_path / "energy-records.jsonl", one_run())
    code, err = exits(["report", str(path), "--format", "csv", *flags], capsys)
    assert code == 2 and err == (f"greencallbacks report: error: {says} (the table of epochs alone): use md, "
                                 "latex or json\n")
    from greencallbacks import report

    with pytest.raises(ValueError, match="with_equivalents and compare are not in the csv format"):
        report.render(one_run(), "csv", with_equivalents="--equivalents" in flags, compare=flags[1:2])


def test_an_intensity_of_minus_zero_is_zero(capsys):
    code, out, _ = run(["estimate", "--hours", "1", "--gpu", "T4", "--intensity", "-0"], capsys)
    assert code == 0 and "CO2eq:    0 kg at 0 gCO2eq/kWh" in out and "-0" not in out


def test_a_closed_standard_output_is_an_error_not_silence(monkeypatch, capsys):
    """With stdout closed (`>&-`) Python makes sys.stdout None and print() writes nowhere: the
    report was lost with exit 0. cat says 'write error' and fails."""
    import subprocess
    import sys

    monkeypatch.setattr(sys, "stdout", None)
    code, err = exits(["zones"], capsys)
    assert code == 2 and err == ("greencallbacks zones: error: [Errno 9] standard output is closed: nowhere to "
                                 "write the output\n")
    assert sys.stdout is None  # as it was
    done = subprocess.run(["sh", "-c", 'exec "$0" -m greencallbacks zones >&-', sys.executable],
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, err)


# ------------------------------------------------- closed stderr, ASCII stdout, pipes named directly


def _runs_given_twice(tmp_path):
    """Three runs, and a copy of their directory: notes (3 runs found) and a warning (records found
    twice) that belong on stderr."""
    import shutil

    write(tmp_path / "runs" / "energy-records.jsonl", three_runs())
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")
    return [str(tmp_path / "runs"), str(tmp_path / "copy")]


@pytest.mark.parametrize("form", ["json", "csv"])
def test_notes_are_dropped_not_written_to_stdout_when_stderr_is_closed(tmp_path, monkeypatch, capsys, form):
    """With stderr closed (`2>&-`) Python makes sys.stderr None, and print(file=None) writes to
    stdout: the runs listing and the warnings went into the JSON or CSV on stdout."""
    import csv
    import subprocess
    import sys

    paths = _runs_given_twice(tmp_path)
    monkeypatch.setattr(sys, "stderr", None)
    assert main(["report", *paths, "--format", form]) == 0
    assert sys.stderr is None  # as it was
    out = capsys.readouterr().out
    if form == "json":
        assert len(json.loads(out)["configurations"][0]["runs"]) == 3
    else:
        rows = list(csv.reader(out.splitlines()))
        assert rows[0][:2] == ["configuration", "run_id"] and len(rows) == 1 + 6 and {len(r) for r in rows} == {len(rows[0])}
    done = subprocess.run(["sh", "-c", 'exec "$0" -m greencallbacks report "$@" 2>&-', sys.executable, *paths,
                           "--format", form], stdout=subprocess.PIPE, timeout=120)
    assert (done.returncode, done.stdout) == (0, out.encode())


@pytest.mark.parametrize("argv, says", [
    (["report", "RUNS"], "| 0 | 2.00 +/- 0 | 12.5 +/- 1.4 |"),
    (["whatif", "RUNS", "--intensity", "SERIES"], "priced with grid-Zurich.csv (CSV)"),  # the name as the user wrote it, less its accent
], ids=["report", "whatif"])
def test_an_ascii_stdout_gets_plain_text_not_an_encoding_error(tmp_path, argv, says):
    """PYTHONIOENCODING=ascii (or a locale whose encoding is ASCII): "±" could not be written, and
    the command failed once its work was done."""
    import subprocess
    import sys

    write(tmp_path / "energy-records.jsonl", three_runs())
    series = tmp_path / "grid-Zürich.csv"
    series.write_text("timestamp,g_per_kwh\n2026-11-23T00:00:00Z,100\n2026-11-24T00:00:00Z,100\n")
    argv = [{"RUNS": str(tmp_path), "SERIES": str(series)}.get(a, a) for a in argv]
    done = subprocess.run([sys.executable, "-m", "greencallbacks", *argv], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    assert says.encode() in done.stdout and done.stdout.isascii() and b"\\x" not in done.stdout
    assert b"Traceback" not in done.stderr and done.stderr.isascii()


def test_plain_text_is_only_for_streams_that_need_it():
    """A stream that encodes "±" keeps it; one that cannot writes it plain, and gets its own error
    handling back after."""
    import io

    from greencallbacks.textformat import plain_where_needed

    for encoding, written in (("utf-8", "5.07 ± 0.50 µJ → Zürich"), ("latin-1", "5.07 ± 0.50 µJ -> Zürich"),
                              ("ascii", "5.07 +/- 0.50 uJ -> Zurich")):
        stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding)
        with plain_where_needed(stream):
            stream.write("5.07 ± 0.50 µJ → Zürich")
            stream.flush()
        assert stream.buffer.getvalue().decode(encoding) == written and stream.errors == "strict"


def _series_lines():
    return "timestamp,g_per_kwh\n2026-11-23T00:00:00Z,100\n2026-11-24T00:00:00Z,100\n"


def test_whatif_reads_a_series_given_as_a_pipe(tmp_path):
    """`whatif --intensity <(cat series.csv)`: bash passes /dev/fd/N, a pipe, which was read until
    named pipes were refused (a pipe found by walking a directory hung `report`)."""
    import subprocess
    import sys

    path = write(tmp_path / "energy-records.jsonl", one_run())
    read_end, write_end = os.pipe()
    os.write(write_end, _series_lines().encode())
    os.close(write_end)  # what `cat` does once it has written the file
    try:
        done = subprocess.run([sys.executable, "-m", "greencallbacks", "whatif", str(path), "--intensity",
                               f"/dev/fd/{read_end}", "--json"], pass_fds=(read_end,), capture_output=True,
                              text=True, timeout=120)
    finally:
        os.close(read_end)
    assert done.returncode == 0, done.stderr
    # 32.5 Wh at the series' 100 gCO2eq/kWh
    assert json.loads(done.stdout)["as_recorded"]["co2eq_g"] == pytest.approx(3.25)


@pytest.mark.slow  # a build: seconds
def test_the_sdist_carries_the_license_and_what_the_tests_import(tmp_path):
    """The sdist had no LICENSE, declared its license in the table form setuptools deprecates, and
    held the test files without their helpers (tests/fakes, lightning_models.py ...): its tests
    could not run."""
    import shutil
    import subprocess
    import sys
    import tarfile
    from importlib.metadata import PackageNotFoundError, version

    try:  # (a venv of Python 3.12 and later has no setuptools unless asked)
        setuptools_major = int(version("setuptools").split(".")[0])
    except PackageNotFoundError:
        pytest.skip("no setuptools here to build the sdist with")
    if setuptools_major < 77:
        pytest.skip("setuptools < 77 cannot build a PEP 639 license (pyproject's [build-system] asks for 77)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = tmp_path / "source"  # built from a copy: the build writes an egg-info beside the sources
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build",
                                                                "dist", "greencallbacks-out", "lightning_logs"))
    built = subprocess.run([sys.executable, "-c",
                            "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
                            str(tmp_path)], cwd=source, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert "SetuptoolsDeprecationWarning" not in built.stderr, built.stderr  # `project.license` as a TOML table
    with tarfile.open(tmp_path / built.stdout.split()[-1]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        metadata = sdist.extractfile(f"{sdist.getnames()[0].split('/')[0]}/PKG-INFO").read().decode()
    assert {"LICENSE", "tests/fakes/__init__.py", "tests/fakes/fake_pynvml.py", "tests/lightning_models.py",
            "tests/test_cli.py", "docs/example-records.jsonl", "scripts/test_versions.py"} <= names
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert not any(name.endswith(".pyc") for name in names)


@pytest.mark.parametrize("command", [
    ["report", "PIPE", "--format", "json"], ["lifecycle", "PIPE", "--inferences", "10", "--json"],
    ["whatif", "PIPE", "--intensity", "SERIES", "--json"],
], ids=["report", "lifecycle", "whatif"])
def test_records_given_as_a_pipe_are_read(tmp_path, command):
    """`report <(cat energy-records.jsonl)`: a pipe named on the command line is read, as a series
    given as one is; one found by walking a directory is still refused."""
    import subprocess
    import sys

    text = write(tmp_path / "energy-records.jsonl", one_run()).read_bytes()
    read_end, write_end = os.pipe()
    os.write(write_end, text)  # a small file: within the pipe's buffer
    os.close(write_end)
    series = _series_covering_one_run(tmp_path)
    argv = [{"PIPE": f"/dev/fd/{read_end}", "SERIES": str(series)}.get(a, a) for a in command]
    try:
        done = subprocess.run([sys.executable, "-m", "greencallbacks", *argv], pass_fds=(read_end,),
                              capture_output=True, text=True, timeout=120)
    finally:
        os.close(read_end)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["configurations"][0]["runs"] if command[0] == "report" else [result["run_id"]]) == ["run-a"]


def test_a_run_id_missing_from_a_named_pipe_is_one_line_not_a_wait(tmp_path, capsys):
    """--run-id naming no run of a named pipe's records: its ids are not read again (the pipe
    would wait for a writer that has gone)."""
    import threading

    fifo = tmp_path / "records.jsonl"
    os.mkfifo(fifo)
    text = write(tmp_path / "source" / "energy-records.jsonl", one_run()).read_text()

    def feed():
        with open(fifo, "w") as pipe:  # blocks until the command opens it
            pipe.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    code, err = exits(["report", str(fifo), "--run-id", "run-z"], capsys)
    writer.join()
    assert (code, err) == (2, f"greencallbacks report: error: no records in {fifo}\n")


def test_zones_and_estimate_say_a_country_without_a_usable_figure_needs_intensity(capsys):
    code, out, _ = run(["zones", "--search", "central african"], capsys)
    assert code == 0 and "--intensity" in out and "no usable figure (0 in the source)" in out, out
    code, err = exits(["estimate", "--hours", "1", "--gpu-tdp", "300", "--country", "CAF"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pass your grid's figure as --intensity" in err, err
