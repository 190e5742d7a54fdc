"""What a researcher reads after training, from the command line, on everyday runs: every figure
adds up to the records, and a figure the records cannot give is said to be unknown, never priced
at 0."""

from __future__ import annotations

import json
import re

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.cli import main
from greencallbacks.report import CSV_COLUMNS
from greencallbacks.runs import load
from greencallbacks.tracker import Tracker
from greencallbacks.units import J_PER_KWH
from tests.fakes.scripted import FakeClock
from tests.test_report_everyday import fitted, later_call, start


def test_lifecycle_of_a_run_that_measured_no_inference_leaves_its_deployment_unknown(tmp_path, capsys):
    """No validation, test or predict: I is unknown, so e x I is too. LC for a billion inferences
    read CT + T + V, the inferences priced at 0 J."""
    fitted(tmp_path, "trained-alone")
    whole_kwh = sum(r.energy_kwh for r in load(tmp_path).records)

    assert main(["lifecycle", str(tmp_path), "--inferences", "1e9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "I  inference:  unknown"  # was "unknown, unknown"
    (line,) = [line for line in lines if line.startswith("LC for")]
    assert line.startswith("LC for 1e+09 inferences: unknown (I is unknown; without deployment, CT + T + V = ")
    assert f"{whole_kwh:.4g} kWh" in line

    assert main(["lifecycle", str(tmp_path), "--inferences", "1e9", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["lifecycle_energy_kwh"] is None and document["lifecycle_co2eq_g"] is None

    # No deployment at all needs no I: LC is the run.
    assert main(["lifecycle", str(tmp_path), "--inferences", "0", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["lifecycle_energy_kwh"] == pytest.approx(whole_kwh, rel=1e-12)
    assert document["lifecycle_energy_kwh"] * J_PER_KWH == pytest.approx(document["run_total_j"], rel=1e-12)


def fitted_with(directory, run_id: str, samples: int | None, carbon: Carbon | None = None):
    """Two epochs of four steps (5 s each at 100 W), each step of ``samples`` (None: not counted)."""
    clock = FakeClock(1000.0)
    tracker = Tracker(output_dir=directory, run_id=run_id, carbon=carbon or Carbon(intensity=200.0))
    start(tracker, clock)
    for epoch in range(2):
        tracker.begin("train", epoch)
        for _ in range(4):
            clock.advance(5.0)
            tracker.add_samples(samples)
        tracker.end("train")
        clock.advance(1.0)
    tracker.finish()
    return tracker, clock


def test_report_json_gives_samples_that_were_not_counted_as_null_as_the_csv_leaves_them_empty(tmp_path, capsys):
    fitted_with(tmp_path, "uncounted", samples=None)
    assert all(not r.samples_counted for r in load(tmp_path).records if r.phase == "train")

    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    (config,) = json.loads(capsys.readouterr().out)["configurations"]
    assert [row["train_samples"] for row in config["epoch_rows"]] == [None, None]
    assert [row["j_per_sample"] for row in config["epoch_rows"]] == [None, None]
    assert config["phases"]["train"]["samples"] is None and config["phases"]["train"]["samples_counted"] is False
    assert config["phases"]["other"]["samples"]["mean"] == 0  # the gaps' 0 is a count: they see no batch

    assert main(["report", str(tmp_path), "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    header = rows[0].split(",")
    assert [row.split(",")[header.index("train_samples")] for row in rows[1:]] == ["", ""]


def test_lifecycle_says_why_an_overhead_share_is_negative(tmp_path, capsys):
    """A first predict call, short and costly per sample, can cost more per sample than training:
    a < 1 and 1 - 1/a below 0, printed as a share of training's energy with no word."""
    tracker, clock = fitted_with(tmp_path, "costly-predict", samples=8)  # 5 s per 8 samples in training
    later_call(tracker, clock, "predict", 0.0)
    clock.advance(10.0)
    tracker.add_samples(4)  # 10 s per 4 samples
    tracker.end("predict")
    tracker.finish()

    assert main(["lifecycle", str(tmp_path), "--inferences", "10", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["overhead_factor"] == pytest.approx(0.25, rel=0.05)
    assert document["overhead_share"] < 0
    assert any(note.startswith("a < 1: a training sample cost less than one inference in predict") for note in document["notes"])
    assert main(["lifecycle", str(tmp_path), "--inferences", "10"]) == 0
    assert "note: a < 1:" in capsys.readouterr().out


MIXED = "these figures mix bases (direct (combustion) emissions only and life-cycle emissions)"


def test_report_and_whatif_say_when_the_grids_they_compare_mix_life_cycle_and_direct_figures(tmp_path, capsys):
    """A run priced in France (life-cycle, 56 g) beside a cloud region's direct figure (122 g):
    part of the difference is the basis, as ``estimate --compare`` says. The report and whatif
    compared them in silence."""
    fitted_with(tmp_path, "in-france", samples=8, carbon=Carbon(country="FR"))

    assert main(["report", str(tmp_path), "--compare-zones", "gcp:europe-west1"]) == 0
    assert f"Note: {MIXED}" in capsys.readouterr().out
    assert main(["report", str(tmp_path), "--compare-zones", "gcp:europe-west1", "--format", "json"]) == 0
    (config,) = json.loads(capsys.readouterr().out)["configurations"]
    assert config["compare_zones_note"].startswith(MIXED)
    assert main(["report", str(tmp_path), "--compare-zones", "gcp:europe-west1", "--format", "latex"]) == 0
    assert "Note: these figures mix bases" in capsys.readouterr().out
    assert main(["report", str(tmp_path), "--compare-zones", "DE", "--format", "json"]) == 0  # both life-cycle
    assert "compare_zones_note" not in json.loads(capsys.readouterr().out)["configurations"][0]

    series = tmp_path / "series.csv"  # the fake wall clock runs from 1.7e9 + 1000 s
    series.write_text("timestamp,gco2eq_per_kwh\n" + "".join(f"{1.7e9 + 60 * i:.0f},{100 + i}\n" for i in range(40)))
    assert main(["whatif", str(tmp_path), "--intensity", str(series), "--zones", "FR,gcp:europe-west1"]) == 0
    assert f"Regions: {MIXED}" in capsys.readouterr().out
    assert main(["whatif", str(tmp_path), "--intensity", str(series), "--zones", "FR,gcp:europe-west1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regions_note"].startswith(MIXED)
    assert main(["whatif", str(tmp_path), "--intensity", str(series), "--zones", "FR,DE", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regions_note"] == ""


KEPT_PUE = "each region's row keeps this energy's PUE (1) and changes only the grid; in its provider's data centres (fleet PUE"


def test_report_whatif_and_estimate_say_a_region_row_keeps_the_runs_pue(tmp_path, capsys):
    """A workstation's run (PUE 1) priced in gcp:europe-west1 keeps PUE 1: only the grid changes,
    where a run there counts Google's fleet PUE (1.1), so the row reads about 10 % low. The three
    commands compared in silence. A grid zone, or a run already counted at the provider's PUE,
    gives no such note."""
    fitted_with(tmp_path / "home", "at-home", samples=8, carbon=Carbon(country="FR"))
    fitted_with(tmp_path / "gcp", "in-gcp", samples=8, carbon=Carbon(region="gcp:europe-west1"))

    assert main(["report", str(tmp_path / "home"), "--compare-zones", "gcp:europe-west1,aws:us-east-1", "--format", "json"]) == 0
    (config,) = json.loads(capsys.readouterr().out)["configurations"]
    assert f"{KEPT_PUE} aws 1.15, gcp 1.1, what a run given that region counts with)" in config["compare_zones_note"]
    assert [row["provider_pue"]["pue"] for row in config["compare_zones"]] == [1.1, 1.15]
    assert main(["report", str(tmp_path / "home"), "--compare-zones", "DE", "--format", "json"]) == 0
    assert "compare_zones_note" not in json.loads(capsys.readouterr().out)["configurations"][0]
    assert main(["report", str(tmp_path / "gcp"), "--compare-zones", "gcp:us-central1", "--format", "json"]) == 0
    assert "PUE" not in json.loads(capsys.readouterr().out)["configurations"][0].get("compare_zones_note", "")

    series = tmp_path / "series.csv"  # the fake wall clock runs from 1.7e9 + 1000 s
    series.write_text("timestamp,gco2eq_per_kwh\n" + "".join(f"{1.7e9 + 60 * i:.0f},{100 + i}\n" for i in range(40)))
    assert main(["whatif", str(tmp_path / "home"), "--intensity", str(series), "--zones", "gcp:europe-west1", "--json"]) == 0
    assert f"{KEPT_PUE} gcp 1.1," in json.loads(capsys.readouterr().out)["regions_note"]
    assert main(["whatif", str(tmp_path / "home"), "--intensity", str(series), "--zones", "DE", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["regions_note"] == ""

    assert main(["estimate", "--gpu", "H100 SXM", "--hours", "1", "--compare", "gcp:europe-west1"]) == 0
    assert f"note: {KEPT_PUE} gcp 1.1," in capsys.readouterr().out
    assert main(["estimate", "--gpu", "H100 SXM", "--hours", "1", "--compare", "gcp:europe-west1", "--pue", "1.1"]) == 0
    assert "keeps this energy's PUE" not in capsys.readouterr().out


def test_a_sensor_uncertainty_of_none_is_said_in_the_unit_of_the_figure_it_qualifies(tmp_path, capsys):
    """Counters read at every boundary leave no uncertainty: "used 1.11 Wh (sensor uncertainty ± 0 kWh)"
    gave the 0 a unit of its own."""
    fitted(tmp_path, "counted")
    assert sum(r.uncertainty_kwh for r in load(tmp_path).records) == 0
    assert main(["report", str(tmp_path)]) == 0
    markdown = capsys.readouterr().out
    assert "used 1.11 Wh (sensor uncertainty ± 0 Wh)" in markdown
    assert "- Sensor uncertainty of the whole run: ± 0 Wh (" in markdown
    assert main(["report", str(tmp_path), "--format", "latex"]) == 0
    assert "used 1.11 Wh (sensor uncertainty $\\pm$ 0 Wh)" in capsys.readouterr().out


def test_the_report_says_a_budget_stopped_the_training_or_warned(tmp_path, capsys):
    """Lightning stopped by its budget after one of four epochs: the records read as a one-epoch
    training, and only the run's summary says why. The report said nothing of it."""
    import time

    pytest.importorskip("torch", reason="torch is not installed: a Lightning run needs it")
    pytest.importorskip("lightning", reason="Lightning is not installed")
    from greencallbacks import Budget
    from tests.fakes.scripted import ScriptedSensor
    from tests.lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    for run_id, budget in (("stopped", Budget(kwh=1e-12, on_exceed="stop")), ("warned", Budget(kwh=1e-12))):
        callback = EnergyCallback(sensors=[ScriptedSensor("gpu0", time.monotonic, 50.0)], intensity=100.0,
                                  output_dir=tmp_path / run_id, run_id=run_id, budget=budget)
        with pytest.warns(Warning, match="reached the budget"):
            L.Trainer(**trainer_kwargs(max_epochs=4, logger=False), callbacks=[callback]).fit(TinyModel(), *loaders())

    assert main(["report", str(tmp_path / "stopped"), "--format", "json"]) == 0
    (config,) = json.loads(capsys.readouterr().out)["configurations"]
    assert config["configuration"]["epochs"] == 1
    (note,) = [note for note in config["provenance"] if "budget" in note]
    assert re.fullmatch(r"Run stopped's budget \(1e-12 kWh\) stopped its training: energy total [0-9.e-]+ kWh reached "
                        r"the budget of 1e-12 kWh; its figures are those of the training it stopped\.", note), note
    # The statement for a paper, in every format (LaTeX too, which has no provenance), says it.
    assert "; stopped by its energy or CO2eq budget) used " in config["statement"], config["statement"]
    assert main(["report", str(tmp_path / "stopped"), "--format", "latex"]) == 0
    assert "stopped by its energy or CO$_2$eq budget" in capsys.readouterr().out  # as the table header sets it
    assert main(["report", str(tmp_path / "warned")]) == 0
    out = capsys.readouterr().out
    assert "- Run warned's budget (1e-12 kWh) warned: energy total " in out and "; its training went on." in out
    assert "stopped by its" not in out


def test_lifecycle_embodied_is_unknown_when_a_search_trial_carries_none():
    """The trained run bills its hardware's footprint, one of the sweep's two other trials ran with
    embodied off: LC embodied summed the one trial that had it, passing part of CT for all of it."""
    import dataclasses

    from greencallbacks.lifecycle import lifecycle
    from tests.test_report import rec

    def run(run_id: str, embodied_g: float | None) -> list:
        return [dataclasses.replace(rec(run_id, phase, 0, 100.0, 10, seq), embodied_co2eq_g=embodied_g)
                for seq, phase in enumerate(("train", "validation"))]

    trained, billed, unbilled = run("model", 1.0), run("trial-a", 2.0), run("trial-b", None)
    assert lifecycle(trained, search=billed, run_id="model").embodied_co2eq_g(0) == pytest.approx(2 * 1.0 + 2 * 2.0)
    lc = lifecycle(trained, search=billed + unbilled, run_id="model")
    assert lc.embodied_co2eq_g(0) is None  # was 6.0, trial-b left out
    assert "1 of 2 search trials carry no embodied CO2eq" in " ".join(lc.notes)
    assert "lifecycle_embodied_co2eq_g" not in lc.to_dict(inferences=0)
    assert lc.energy_j(0) == pytest.approx(6 * 100.0)  # the operational figures stand


def test_whatif_plots_each_of_several_runs_whose_ids_are_no_file_names(tmp_path, capsys):
    """A sweep's run ids such as ``bert/lr=1e-4``: ``--plot what.png`` named ``what-bert/lr=1e-4.png``,
    a file in a directory, and the command failed ("Invalid name") for input that was fine."""
    pytest.importorskip("matplotlib")
    for run_id in ("bert/lr=1e-4", "bert/lr=1e-3"):
        fitted_with(tmp_path / "runs", run_id, samples=8)
    series = tmp_path / "series.csv"  # the fake wall clock runs from 1.7e9 + 1000 s
    series.write_text("timestamp,gco2eq_per_kwh\n" + "".join(f"{1.7e9 + 60 * i:.0f},{100 + i}\n" for i in range(40)))
    assert main(["whatif", str(tmp_path / "runs"), "--intensity", str(series), "--plot", str(tmp_path / "what.png")]) == 0
    written = sorted(path.name for path in tmp_path.glob("what-*.png"))
    assert len(written) == 2 and all(name.startswith("what-bert-lr-1e-") for name in written), written
    assert capsys.readouterr().out.count("Plot written to ") == 2


def test_report_csv_says_which_runs_it_has_no_row_for(tmp_path, capsys):
    """A validate or predict session trains no epoch: the CSV, a table of epochs, was its header
    alone and exit 0, as if nothing had been measured."""
    tracker, clock = fitted_with(tmp_path / "fit", "trained", samples=8)
    evaluated = Tracker(output_dir=tmp_path / "eval", run_id="evaluated", carbon=Carbon(intensity=200.0))
    later_call(evaluated, clock, "validation", 10.0)
    evaluated.end("validation")
    evaluated.finish()

    assert main(["report", str(tmp_path / "eval"), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [",".join(CSV_COLUMNS)]
    assert err == ("greencallbacks report: run evaluated trained no epoch, so no row of this table of epochs holds "
                   "it: --format md or json gives its totals by phase\n")
    assert main(["report", str(tmp_path / "fit"), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3 and err == ""  # the header and two epochs
