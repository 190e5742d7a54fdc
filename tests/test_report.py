"""Reports: every format carries the records' numbers; several runs give mean ± SE; LaTeX and PNG are well formed."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import operator
import re
import shutil
import struct
import subprocess

import pytest

from greencallbacks import report
from greencallbacks.records import Record

KWH = 3.6e6


def rec(run_id, phase, epoch, energy_j, samples, seq, *, g_per_kwh=500.0, seconds=2.0, uncertainty_j=0.0, method="counter"):
    return Record(
        run_id=run_id, phase=phase, epoch=epoch, seq=seq, start_time="2026-11-23T10:00:00+00:00",
        duration_s=seconds, samples=samples, it_energy_kwh=energy_j / KWH, energy_kwh=energy_j / KWH,
        co2eq_g=energy_j / KWH * g_per_kwh, intensity_gco2eq_per_kwh=g_per_kwh,
        intensity_source="Grid_test 100% source", intensity_year=2023, intensity_zone="FRA", pue=1.0,
        energy_j_per_sample=energy_j / samples if samples else None, co2eq_g_per_sample=None,
        components=[
            {"name": "gpu0", "kind": "gpu", "method": method, "energy_j": 0.75 * energy_j, "uncertainty_j": uncertainty_j,
             "source": "NVML energy counters" if method == "counter" else "integrated NVML power samples"},
            {"name": "cpu", "kind": "cpu", "method": "estimated", "energy_j": 0.25 * energy_j, "uncertainty_j": 0.0,
             "source": "TDP x CPU time"},
        ],
        uncertainty_kwh=uncertainty_j / KWH, tool_version="9.9.9",
    )


def test_the_statement_says_what_each_sensor_read_and_no_more_where_the_record_does_not_say():
    """An AMD GPU's counter is no NVML counter, a declared constant power no TDP estimate; records
    that do not name their source (written before it, or a user's sensor) say only the method."""
    amd = [dataclasses.replace(r, components=[
        {"name": "gpu0", "kind": "gpu", "method": "counter", "energy_j": 1.0, "source": "amdsmi energy counters"},
        {"name": "switch", "kind": "cpu", "method": "estimated", "energy_j": 1.0, "source": "a declared constant power"},
    ]) for r in one_run()]
    assert ("GPU energy from amdsmi energy counters; CPU energy estimated from a declared constant power"
            in report.method_sentence(amd))
    unsaid = [dataclasses.replace(r, components=[{k: v for k, v in c.items() if k != "source"} for c in r.components])
              for r in one_run()]
    assert report.method_sentence(unsaid) == "CPU energy estimated; GPU energy from energy counters"


def test_the_statement_says_which_cpu_estimate_and_where_its_defaults_come_from(tmp_path):
    """A real session on a VM whose CPU no table knows (this demo's 'AMD EPYC'), one on a VM of a
    known host: the statement said "CPU energy estimated from TDP x CPU time" for both, though the
    first used no TDP; now it says which, and cites the defaults as the records carry them."""
    import time

    from greencallbacks.records import read_records
    from greencallbacks.sensors.estimate import CpuEstimateSensor, RamEstimateSensor
    from greencallbacks.session import EnergySession
    from tests.fakes.cpuinfo import write_cpuinfo

    def statement_on(cpuinfo, run_id):
        cpu = CpuEstimateSensor(cpuinfo_path=cpuinfo, logical_cpus=2, physical_cores=2)
        session = EnergySession(intensity=100, run_id=run_id, output_dir=tmp_path / run_id,
                                sensors=[cpu, RamEstimateSensor()])
        session.start()
        start = time.process_time()
        while time.process_time() - start < 0.05:
            pass
        session.stop()
        return report.statement(read_records(tmp_path / run_id))

    unknown = statement_on(write_cpuinfo(tmp_path, "AMD EPYC", cores=2, threads_per_core=1, vm=True), "unknown")
    assert ("CPU energy estimated from a default of 10 W per physical core x CPU time (no TDP found for CPU "
            "'AMD EPYC'; the default is greencallbacks' assumption, see its data/SOURCES.md)") in unknown
    assert ("RAM energy estimated from resident memory x 0.37 W/GB (the default, after Green Algorithms' "
            "0.3725 W/GB, Advanced Science 2021)") in unknown
    assert "TDP x CPU time" not in unknown
    share = statement_on(write_cpuinfo(tmp_path, "AMD EPYC 9654 96-Core Processor", cores=1, vm=True), "share")
    assert ("CPU energy estimated from TDP x CPU time, a VM's share of its host's (1.875 W per busy vCPU: TDP 360 W "
            "per socket of AMD EPYC 9654, from CodeCarbon's CPU table, over 192 hardware threads)") in share


def one_run(run_id="run-a", train_j=(36000.0, 72000.0), scale=1.0):
    records, seq = [], 0
    for epoch, energy in enumerate(train_j):
        records.append(rec(run_id, "train", epoch, energy * scale, 1000, seq, uncertainty_j=360.0)); seq += 1
        records.append(rec(run_id, "validation", epoch, 3600.0 * scale, 100, seq)); seq += 1
    records.append(rec(run_id, "test", None, 1800.0 * scale, 500, seq))
    return records


def three_runs():
    # Epoch-0 training energy 36, 45, 54 kJ (0.010, 0.0125, 0.015 kWh) over three seeds.
    return one_run("seed-1", scale=1.0) + one_run("seed-2", scale=1.25) + one_run("seed-3", scale=1.5)


def test_mean_and_standard_error_by_hand_for_three_runs():
    rows = report.epoch_summary(three_runs())
    epoch0 = rows[0]["energy_kwh"]
    # values 0.010, 0.0125, 0.015: mean 0.0125; sd = 0.0025; SE = 0.0025 / sqrt(3)
    assert epoch0["n"] == 3
    assert epoch0["mean"] == pytest.approx(0.0125)
    assert epoch0["se"] == pytest.approx(0.0025 / math.sqrt(3))
    total = report.summary(three_runs())["total"]["energy_kwh"]
    per_run = [(36000 + 72000 + 2 * 3600 + 1800) * s / KWH for s in (1.0, 1.25, 1.5)]
    mean = sum(per_run) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in per_run) / 2 / 3)
    assert total["mean"] == pytest.approx(mean) and total["se"] == pytest.approx(se)
    assert report.mean_and_se([4.0]) == (4.0, None)


def test_markdown_has_the_records_numbers_hardware_provenance_and_statement():
    text = report.render(one_run(), "md")
    # 36 kJ = 10 Wh at 500 g/kWh = 5 g; 36 J/sample; 3.6 kJ validation = 1 Wh; 360 J sensors = 0.1 Wh
    assert "| 0 | 2.00 | 10.0 | 5.00 | 36.0 | 1.00 | 0.10 | cpu:estimated, gpu0:counter |" in text
    assert "| 1 | 2.00 | 20.0 | 10.0 | 72.0 | 1.00 |" in text
    assert "training (Wh)" in text and "validation (Wh)" in text
    assert "Totals by phase" in text and "| test |" in text
    assert "| gpu0 | gpu | counter | 75% |" in text
    assert "greencallbacks 9.9.9" in text and "GPU energy from NVML energy counters" in text
    assert "CPU energy estimated" in text
    assert "±" not in text.split("## Totals by phase")[0]  # one run: no ± over runs in the table


def test_statement_names_what_each_figure_covers():
    text = report.statement(one_run())
    # training alone: 36 + 72 kJ = 30 Wh; whole run: + 7.2 kJ validation + 1.8 kJ test = 32.5 Wh
    # 360 J of counter uncertainty in each epoch, independent: 509 J = 141 mWh (summed: 200 mWh)
    assert text.startswith("The training (2 epochs of 1000 samples) used 30.0 Wh (sensor uncertainty ± 141 mWh)")
    assert "and emitted 15.0 gCO2eq" in text
    assert "the whole run, including validation and test, used 32.5 Wh" in text and "emitted 16.2 gCO2eq" in text
    assert "Training used" not in text


def test_markdown_of_several_runs_says_mean_and_se():
    text = report.render(three_runs(), "md")
    assert "mean ± standard error over the 3 runs" in text
    # epoch 0: 10, 12.5, 15 Wh: mean 12.5, SE 2.5/sqrt(3) = 1.443 -> "12.5 ± 1.4"
    assert "| 0 | 2.00 ± 0 | 12.5 ± 1.4 |" in text
    assert "Over 3 runs of one configuration, training (2 epochs of 1000 samples) used 37.5 ± 4.3 Wh" in text
    assert f"Runs are grouped by configuration ({report.GROUPED_BY})" in text and "samples and steps per epoch" in text


def paused_run(run_id="run-a", paused_s=3.0):
    """``one_run`` with a 4 s gap before epoch 1 of 4 kJ, ``paused_s`` of it a carbon-aware pause."""
    gap = dataclasses.replace(rec(run_id, "other", 1, 4000.0, 0, 5, seconds=4.0), paused_s=paused_s)
    return one_run(run_id) + [gap]


def test_the_report_says_how_long_training_paused_for_carbon_and_what_that_time_cost():
    """The pause's energy is in the ``other`` phase, where nothing said it was a pause."""
    # 3 s of a 4 s, 4 kJ gap: 3 kJ = 833 mWh, at 500 g/kWh 417 mgCO2eq
    said = ("Training was paused 3.00 s for a cleaner grid (carbon-aware pause); that time used 833 mWh and "
            "emitted 417 mgCO2eq, counted in the time between phases (other).")
    markdown = report.render(paused_run(), "md")
    assert said in markdown.split("## Totals by phase")[1].split("##")[0]
    latex = report.render(paused_run(), "latex")
    _check_latex_structure(latex)
    assert said.replace("CO2", "CO$_2$") in latex.split(r"\caption{")[1].splitlines()[0]
    several = report.render(paused_run("a", 3.0) + paused_run("b", 5.0) + one_run("c"), "md")
    assert "Training was paused 2.7 ± 1.5 s per run (mean ± SE)" in several  # 3, 5, 0 s
    assert "paused" not in report.render(one_run(), "md") and "paused" not in report.render(one_run(), "latex")
    pause = json.loads(report.render(paused_run(), "json"))["configurations"][0]["carbon_pause"]
    assert pause["seconds"]["mean"] == 3.0 and pause["energy_kwh"]["mean"] == pytest.approx(3000.0 / KWH)
    assert json.loads(report.render(one_run(), "json"))["configurations"][0]["carbon_pause"] is None


def test_epochs_a_later_fit_trained_again_are_not_summed_into_one_epochs_samples():
    """Keras fit(epochs=4), then fit(initial_epoch=2, epochs=4) with the same callback: epochs 2 and
    3 trained twice, 100 samples each time; its optimizer's step keeps rising over the two fits."""
    records, seq = [], 0
    for attempt, epochs in ((0, range(4)), (1, range(2, 4))):
        for epoch in epochs:
            r = rec("keras", "train", epoch, 3600.0, 100, seq)
            records.append(dataclasses.replace(r, attempt=attempt, step=10 * seq)); seq += 1
    config = report.configuration(records)
    assert config["epoch_samples"] == [[0, 100], [1, 100], [2, 100], [3, 100]]  # was 200 for epochs 2 and 3
    assert report.statement(records).startswith(
        "The training (4 epochs of 100 samples in 10 steps each; 2 epochs trained again from an earlier checkpoint or epoch, both "
        "counted) used 6.00 Wh")
    # max_steps ended attempt 0 inside epoch 1 and the resume went on with it: its parts add up.
    cut = [dataclasses.replace(rec("hf", "train", 0, 3600.0, 100, 0), step=10),
           dataclasses.replace(rec("hf", "train", 1, 1800.0, 40, 1), step=14),
           dataclasses.replace(rec("hf", "train", 1, 1800.0, 60, 2), step=20, attempt=1)]
    assert report.configuration(cut)["epoch_samples"] == [[0, 100], [1, 100]]
    assert "trained again" not in report.statement(cut)
    # The resume went back to the checkpoint of epoch 0's end instead: epoch 1 trained anew, whole.
    back = cut[:2] + [dataclasses.replace(rec("hf", "train", 1, 3600.0, 100, 2), step=20, attempt=1)]
    assert report.configuration(back)["epoch_samples"] == [[0, 100], [1, 100]]  # was 140
    assert "1 epoch trained again" in report.statement(back)
    # From a checkpoint inside the part done: they overlap by an amount not recorded.
    overlap = cut[:2] + [dataclasses.replace(rec("hf", "train", 1, 3600.0, 70, 2), step=20, attempt=1)]
    assert report.configuration(overlap)["epoch_samples"] == [[0, 100], [1, None]]  # was 110


def test_an_epoch_resumed_inside_after_a_crash_is_not_said_to_be_its_rest_alone():
    """A crash in epoch 1 after a mid-epoch checkpoint: the resume trains the epoch's rest (60 of
    100). How much of the 70 the crashed attempt did the checkpoint kept is not recorded."""
    records = [dataclasses.replace(rec("l", "train", 0, 3600.0, 100, 0), step=10),
               dataclasses.replace(rec("l", "train", 1, 2500.0, 70, 1), step=17, partial=True),
               dataclasses.replace(rec("l", "train", 1, 2100.0, 60, 2), step=20, attempt=1),
               dataclasses.replace(rec("l", "train", 2, 3600.0, 100, 3), step=30, attempt=1)]
    config = report.configuration(records)
    assert config["epoch_samples"] == [[0, 100], [1, None], [2, 100]]  # was 60 for epoch 1
    assert report.statement(records).startswith(
        "The training (3 epochs of 100 samples in 10 steps each, epoch 1: not known; 1 epoch cut short")
    # The resume went back to epoch 0's end instead: epoch 1 trained whole again, counted whole.
    whole = records[:2] + [dataclasses.replace(r, samples=100) if r.epoch == 1 else r for r in records[2:]]
    assert report.configuration(whole)["epoch_samples"] == [[0, 100], [1, 100], [2, 100]]


def test_runs_of_different_configurations_are_not_averaged():
    six = one_run("six-epochs", train_j=(36000.0,) * 6)
    records = six + one_run("two-a") + one_run("two-b", scale=1.5)
    groups = report.group_runs(records)
    assert [report.run_ids(g) for _, g in groups] == [["six-epochs"], ["two-a", "two-b"]]
    assert [c["epochs"] for c, _ in groups] == [6, 2]
    text = report.render(records, "md")
    assert "## Configuration 1: unknown, 6 training epoch(s) of 1000 samples" in text
    assert "## Configuration 2: unknown, 2 training epoch(s)" in text and "(2 runs: two-a, two-b)" in text
    first, second = text.split("## Configuration 2")
    assert "±" not in first.split("### Provenance")[0]  # n = 1: never ± over runs
    assert "mean ± standard error over the 2 runs" in second
    assert "over 3 runs" not in text
    data = json.loads(report.render(records, "json"))
    assert data["grouped_by"] == report.GROUPED_BY
    assert [g["runs"] for g in data["configurations"]] == [["six-epochs"], ["two-a", "two-b"]]
    assert data["configurations"][0]["total"]["energy_kwh"]["se"] is None
    # A different sampler, or a different set of sensors, is another configuration too.
    fewer = [dataclasses.replace(r, samples=500) for r in one_run("half-data")]
    other_gpu = [dataclasses.replace(r, components=[dict(c, method="sampled") if c["name"] == "gpu0" else c
                                                     for c in r.components]) for r in one_run("sampled")]
    assert len(report.group_runs(one_run("x") + fewer + other_gpu)) == 3
    # A second fit that continues the first (epochs 2 and 3) is not a repeat of it.
    continued = [dataclasses.replace(r, epoch=r.epoch + 2) if r.epoch is not None else r for r in one_run("fit-2")]
    groups = report.group_runs(one_run("fit-1") + continued)
    assert [report.run_ids(g) for _, g in groups] == [["fit-1"], ["fit-2"]]
    assert "2 training epoch(s) from epoch 2 of 1000 samples" in report.describe_configuration(groups[1][0])
    # Priced on another grid or PUE: not a repeat either (two callbacks with two grids measure one
    # training twice; a mean ± SE over them was reported as if over two seeds).
    def priced(run_id, **changes):
        return [dataclasses.replace(r, **changes) for r in one_run(run_id)]

    groups = report.group_runs(one_run("fr") + priced("de", intensity_zone="DEU") + priced("fr-pue", pue=1.2)
                               + priced("given-50", intensity_zone="user", intensity_gco2eq_per_kwh=50.0)
                               + priced("given-500", intensity_zone="user", intensity_gco2eq_per_kwh=500.0))
    assert [report.run_ids(g) for _, g in groups] == [["fr"], ["de"], ["fr-pue"], ["given-50"], ["given-500"]]
    assert report.describe_configuration(groups[3][0]).endswith("grid 50 gCO2eq/kWh given, PUE 1")


def test_an_epoch_cut_short_and_redone_after_a_resume_is_its_own_row():
    records = one_run("resumed", train_j=(36000.0, 72000.0))[:-1]  # epochs 0, 1 of attempt 0
    records.append(dataclasses.replace(rec("resumed", "train", 2, 18000.0, 400, 4), partial=True))  # crashed mid-epoch
    records.append(dataclasses.replace(rec("resumed", "train", 2, 36000.0, 1000, 5), attempt=1))  # redone whole
    records.append(dataclasses.replace(rec("resumed", "validation", 2, 3600.0, 100, 6), attempt=1))
    rows = report.epoch_rows(records)
    assert [(r["attempt"], r["epoch"], r["redone"]) for r in rows] == [(0, 0, False), (0, 1, False), (0, 2, True), (1, 2, False)]
    assert rows[2]["j_per_sample"] == pytest.approx(18000.0 / 400)  # its own samples, not doubled
    assert rows[3]["j_per_sample"] == pytest.approx(36.0)
    text = report.render(records, "md")
    assert "| 2 (attempt 0: cut short, redone) |" in text and "| 2 |" in text  # redone whole: an epoch as any
    assert "(partial)" not in text
    assert "The training (3 epochs of 1000 samples; 1 epoch cut short by a crash and redone, both counted) used" in text
    total = report.summary(records)["total"]
    assert total["train_energy_kwh"]["mean"] == pytest.approx((36000 + 72000 + 18000 + 36000) / KWH)  # spent: counted
    csv_rows = list(csv.DictReader(io.StringIO(report.render(records, "csv"))))
    assert [(r["attempt"], r["epoch"], r["status"]) for r in csv_rows][2:] == [("0", "2", "cut short, redone"), ("1", "2", "complete")]
    # A record of an older version has no attempt: read as 0.
    data = records[0].to_dict()
    del data["attempt"]
    assert Record.from_dict(data).attempt == 0


def test_a_checkpoint_evaluated_in_a_later_session_adds_to_the_totals_not_to_the_epochs():
    """Lightning's validate(ckpt_path=...) in a new process continues the run as an attempt that
    trains nothing: its validation (at Lightning's epoch 0 there) is no epoch of the run."""
    records = one_run("evaluated")[:-1]
    records.append(dataclasses.replace(rec("evaluated", "validation", 0, 7200.0, 100, 4), attempt=1))
    records.append(dataclasses.replace(rec("evaluated", "other", 0, 360.0, 0, 5), attempt=1))
    labels = [row["label"] for row in report.epoch_summary(records)]
    assert labels == ["0", "1"]
    assert [row["val_energy_kwh"] for row in report.epoch_rows(records)] == pytest.approx([3600.0 / KWH] * 2)
    text = report.render(records, "md")
    assert "resumed from a checkpoint" not in text
    assert "The run also has calls that trained nothing (validation: an evaluation or prediction after its training, or a checkpoint of it evaluated in a later session)" in text
    total = report.summary(records)["total"]
    assert total["energy_kwh"]["mean"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)
    assert report.phase_totals(records)["validation"]["energy_kwh"] == pytest.approx((3600.0 * 2 + 7200.0) / KWH)


def test_the_whole_run_uncertainty_counts_a_counter_s_shared_boundaries_once():
    """A counter's error sits at the boundaries its phases share: it cancels over a run but for the
    first and last. Added linearly over nine phases (three of them 10 us gaps with 0 J, each said
    +-30 J) a run exact to 0.01 % was given +-27 %. An estimate's bias still adds over the phases."""
    records = []
    for seq in range(9):
        phase = ("train", "validation", "other")[seq % 3]
        r = rec("r", phase, seq // 3, 0.0 if phase == "other" else 400.0, 10, seq, uncertainty_j=30.0 + seq)
        r.components = [r.components[0]]  # the counter alone
        records.append(r)
    total = report.run_totals(records)["r"]
    assert total["uncertainty_kwh"] == pytest.approx(2 * 38.0 / KWH)  # was 306 J (sum), now twice the largest
    # The training phases share no boundary: their counter errors are independent (they were
    # summed, 99 J, more than the whole run's 76 J that holds them).
    assert total["train_uncertainty_kwh"] == pytest.approx(math.sqrt(30**2 + 33**2 + 36**2) / KWH)
    estimated = [dataclasses.replace(r, components=[{**r.components[0], "method": "estimated"}]) for r in records]
    assert report.run_totals(estimated)["r"]["uncertainty_kwh"] == pytest.approx(sum(30.0 + k for k in range(9)) / KWH)


def test_uncounted_samples_show_na_not_zero():
    records = one_run()
    records[0] = dataclasses.replace(records[0], samples=0, samples_counted=False, energy_j_per_sample=None)
    text = report.render(records, "md")
    assert "| 0 | 2.00 | 10.0 | 5.00 | n/a |" in text
    assert "| train | 4.00 | 30.0 | 15.0 | n/a |" in text
    assert "samples and J/sample are n/a" in text and "lower bound" not in text  # as the tables print them
    assert report.summary(records)["epochs"][0]["j_per_sample"] is None
    rows = list(csv.DictReader(io.StringIO(report.render(records, "csv"))))
    assert rows[0]["train_samples"] == "" and rows[0]["j_per_sample"] == ""
    assert report.configuration(records)["samples_per_epoch"] == 1000  # from the counted epoch


def test_validation_logged_under_several_prefixes_is_broken_down_by_prefix():
    """HF with two evaluation sets logs eval_a_* and eval_b_*: the phase's total, then each set's."""
    def runs(run_id, scale):
        records = one_run(run_id, scale=scale)
        for i, r in enumerate(list(records)):
            if r.phase == "validation":
                records[i] = dataclasses.replace(r, metric_prefix="eval_a")
                records.append(dataclasses.replace(r, metric_prefix="eval_b", energy_kwh=r.energy_kwh / 2,
                                                   samples=10, seq=100 + i))
        return records

    records = runs("seed-1", 1.0) + runs("seed-2", 1.5)
    data = report.summary(records)
    parts = data["phase_prefixes"]["validation"]
    assert list(parts) == ["eval_a", "eval_b"] and list(data["phase_prefixes"]) == ["validation"]
    # Two epochs of 3,600 J (eval_a) and 1,800 J (eval_b) per run, the second run 1.5 times.
    assert parts["eval_a"]["energy_kwh"]["mean"] == pytest.approx(2 * 3600 * 1.25 / KWH)
    assert parts["eval_b"]["energy_kwh"]["mean"] == pytest.approx(2 * 1800 * 1.25 / KWH)
    assert parts["eval_b"]["samples"]["mean"] == 20
    assert data["phases"]["validation"]["energy_kwh"]["mean"] == pytest.approx(
        parts["eval_a"]["energy_kwh"]["mean"] + parts["eval_b"]["energy_kwh"]["mean"])
    table = report.format_phase_summary(data).splitlines()
    names = [line.split("|")[1].strip() for line in table[2:]]
    assert names == ["train", "validation", "… eval_a", "… eval_b", "test", "**whole run (all phases)**"]
    assert report.summary(one_run())["phase_prefixes"] == {}  # one prefix (or none): nothing to break down


def test_json_matches_the_records():
    data = json.loads(report.render(three_runs(), "json"))
    (group,) = data["configurations"]
    assert group["runs"] == ["seed-1", "seed-2", "seed-3"]
    assert group["epochs"][1]["energy_kwh"]["mean"] == pytest.approx(0.025)
    assert group["phases"]["test"]["energy_kwh"]["mean"] == pytest.approx(1800 * 1.25 / KWH)
    assert group["carbon"]["g_per_kwh"] == pytest.approx(500.0)
    assert {h["method"] for h in group["hardware"]} == {"counter", "estimated"}
    assert group["epochs"][0]["j_per_sample"]["mean"] == pytest.approx(45.0)


def test_csv_has_one_row_per_run_and_epoch_with_the_records_values():
    rows = list(csv.DictReader(io.StringIO(report.render(one_run(), "csv"))))
    assert [(r["run_id"], r["attempt"], r["epoch"]) for r in rows] == [("run-a", "0", "0"), ("run-a", "0", "1")]
    assert float(rows[0]["energy_kwh"]) == pytest.approx(0.01)
    assert float(rows[1]["co2eq_g"]) == pytest.approx(10.0)
    assert float(rows[0]["uncertainty_kwh"]) == pytest.approx(360.0 / KWH)
    assert rows[0]["intensity_source"] == "Grid_test 100% source; zone FRA, 2023"


def test_csv_numbers_are_short_and_read_back_to_the_same_value():
    # 0.1 + 0.2 style noise: the sum of the phases is 56.038999999999994 as a float
    records = [rec("r", "train", 0, j, 10, i, g_per_kwh=1.0) for i, j in enumerate((20_000.1, 16_000.2, 20_000.7))]
    records = [dataclasses.replace(r, epoch=0, co2eq_g=g) for r, g in zip(records, (18.68, 18.679, 18.68))]
    assert functools.reduce(operator.add, (r.co2eq_g for r in records)) == 56.038999999999994  # sum() compensates from 3.12
    (row,) = csv.DictReader(io.StringIO(report.render(records, "csv")))
    assert row["co2eq_g"] == "56.039"
    assert row["energy_kwh"] == format(sum(r.energy_kwh for r in records), ".12g")
    assert float(row["energy_kwh"]) == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)


def test_provenance_says_each_source_once_without_nesting():
    from greencallbacks.carbon import Carbon

    france, pue = Carbon(country="FR").static_intensity, Carbon(country="FR")
    records = [dataclasses.replace(r, intensity_source=france.source, intensity_year=france.year, intensity_zone=france.zone,
                                   intensity_licence=france.licence, pue=pue.pue, pue_source=pue.pue_source)
               for r in one_run()]
    notes = "\n".join(report.provenance(records))
    assert f"from {france.source}; licence CC-BY-4.0." in notes  # year and zone are in the source already
    assert notes.count("2023") == 1 and "(2023" not in notes
    assert "PUE: 1, IT energy only (no PUE given and no cloud region)." in notes
    assert "1 (1.0" not in notes
    text = report.render(records, "md")
    assert text.count(france.source) == 2  # provenance and statement, once each


def _check_latex_structure(text: str) -> None:
    assert text.index(r"\toprule") < text.index(r"\midrule") < text.index(r"\bottomrule")
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
    depth = 0
    for i, ch in enumerate(text):
        if ch in "{}" and (i == 0 or text[i - 1] != "\\"):
            depth += 1 if ch == "{" else -1
            assert depth >= 0
    assert depth == 0
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    assert not re.search(r"(?<!\\)%", body), "unescaped % outside comments"
    assert not re.search(r"(?<!\\)_(?![{0-9])", body.replace("CO$_2$", "")), "unescaped _"


def test_latex_is_booktabs_with_escaped_text_and_the_numbers():
    text = report.render(three_runs(), "latex", with_equivalents=True)
    _check_latex_structure(text)
    assert r"Grid\_test 100\% source" in text
    assert r"& $12.5 \pm 1.4$ &" in text and "Energy (Wh)" in text  # 10, 12.5, 15 Wh
    assert "e-0" not in text.split(r"\midrule")[1]  # no 1.250e-02 style cells
    assert r"Training & $4.00 \pm 0$ & $37.5 \pm 4.3$" in text
    assert r"Whole run & $10.0 \pm 0$ & $40.6 \pm 4.7$" in text and "Whole run: every phase" in text
    # One way of measuring for every row: said once in the caption, not in a column that widens the table.
    assert "Measured by: cpu:estimated, gpu0:counter." in text and r"{lrrrr}" in text
    mixed = three_runs()[:2] + [dataclasses.replace(r, components=[dict(c, method="sampled") for c in r.components])
                                for r in three_runs()[2:4]]
    assert r"{lrrrrl}" in report.render(mixed[:4], "latex") and "& Measured by" in report.render(mixed[:4], "latex")
    assert "Mean $\\pm$ standard error over 3 runs" in text
    assert "miles driven" in text and "EPA" in text
    one = report.render(one_run(), "latex")
    assert r"\pm" not in one.split(r"\end{tabular}")[0]  # one run: plain numbers


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine installed")
def test_latex_compiles(tmp_path):
    resumed = one_run("resumed")[:2] + [dataclasses.replace(rec("resumed", "train", 1, 9.0, 0, 2), partial=True),
                                        dataclasses.replace(rec("resumed", "train", 1, 0.5, 10, 3), attempt=1),
                                        dataclasses.replace(rec("resumed", "train", 2, 0.5, 10, 4), attempt=1)]
    body = report.render(three_runs() + resumed, "latex", with_equivalents=True, compare=["FR", "US-CA"])
    assert body.count(r"\begin{tabular}") == 2 and "attempt 0: cut short, redone" in body
    document = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body + "\\end{document}\n"
    (tmp_path / "report.tex").write_text(document, encoding="utf-8")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "report.pdf").stat().st_size > 0


def test_latex_sets_co2_as_its_table_header_does_in_every_sentence():
    """The statement said "emitted 5.00 gCO2eq" under a column headed "CO$_2$eq (g)"; so did the
    caption's pause sentence, the equivalents and the zones compared."""
    latex = report.render(paused_run() + three_runs(), "latex", with_equivalents=True, compare=["FR", "US-CA"])
    _check_latex_structure(latex)
    typeset = "\n".join(line for line in latex.splitlines() if not line.startswith("%"))
    assert "CO2" not in typeset
    assert "emitted 17.8 $\\pm$ 1.8 gCO$_2$eq per run" in typeset and "at 500 gCO$_2$eq/kWh" in typeset
    assert "mgCO$_2$eq, counted" in typeset  # the caption's pause sentence
    assert "in FR (56 gCO$_2$eq/kWh)" in typeset and "g CO$_2$ per mile" in typeset
    # Markdown keeps its plain text.
    markdown = report.render(paused_run() + three_runs(), "md", with_equivalents=True, compare=["FR"])
    assert "gCO2eq per run" in markdown and "CO$_2$" not in markdown


def test_latex_escape():
    assert report.latex_escape("a_b 50% & $x {y} #1 ~ ^") == r"a\_b 50\% \& \$x \{y\} \#1 \textasciitilde{} \textasciicircum{}"


def test_equivalents_and_compare_zones():
    data = report.summary(one_run(), with_equivalents=True, compare=["FR", "world"])
    grams = (36000 + 72000 + 7200 + 1800) / KWH * 500.0
    miles = next(e for e in data["equivalents"] if "miles" in e["what"])
    assert miles["amount"] == pytest.approx(grams / 400.0) and miles["year"] and "EPA" in miles["source"]
    assert len(data["equivalents"]) == 2
    from greencallbacks.estimate import intensity_for

    fr = data["compare_zones"][0]
    assert fr["zone"] == "FR"
    assert fr["co2eq_g"] == pytest.approx(0.0325 * intensity_for("FR").g_per_kwh)
    with pytest.raises(ValueError, match="zone"):
        report.summary(one_run(), compare=["Atlantis"])


def test_plot_is_a_png_of_nonzero_size(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "energy.png"
    report.plot_epochs(three_runs(), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width > 100 and height > 100


def test_plot_format_follows_the_extension(tmp_path):
    pytest.importorskip("matplotlib")
    report.plot_epochs(one_run(), tmp_path / "energy.pdf")
    report.plot_epochs(one_run(), tmp_path / "energy.SVG")
    assert (tmp_path / "energy.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "energy.SVG").read_bytes()[:2000]
    with pytest.raises(ValueError, match=r"\.png, \.pdf or \.svg"):
        report.plot_epochs(one_run(), tmp_path / "energy.jpg")
    assert not (tmp_path / "energy.jpg").exists()


def test_plot_has_integer_epochs_readable_units_validation_and_says_what_is_cumulative():
    pytest.importorskip("matplotlib")
    import matplotlib

    backend = matplotlib.get_backend()
    three = one_run("small", train_j=(0.5, 0.6, 0.7))  # 0.14 mWh: would read 0.0002 Wh
    figure = report.epoch_figure(three)
    axes, line_axes = figure.axes
    figure.canvas.draw()
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0", "1", "2"]
    assert axes.get_ylabel() == "energy per epoch (Wh)"  # validation 1 Wh on top of tiny training bars
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert labels == ["training (Wh)", "validation (Wh)", "cumulative CO2eq (g), training + validation"]  # one run: no SE
    tiny = report.epoch_figure([r for r in three if r.phase == "train"])
    assert tiny.axes[0].get_ylabel() == "energy per epoch (mWh)"
    assert "cumulative CO2eq (mg), training" in [t.get_text() for t in tiny.axes[0].get_legend().get_texts()]
    assert matplotlib.get_backend() == backend  # the caller's backend is left alone


def test_a_plot_shows_as_an_image_in_a_notebook_and_pickles():
    """A bare Figure shows in a notebook without pyplot's inline backend as the text "<Figure size
    768x456 with 2 Axes>": IPython takes a figure's image from its _repr_png_."""
    pytest.importorskip("matplotlib")
    import pickle

    figure = report.epoch_figure(one_run())
    assert figure._repr_png_().startswith(b"\x89PNG")
    again = pickle.loads(pickle.dumps(figure))
    assert again._repr_png_().startswith(b"\x89PNG") and len(again.axes) == len(figure.axes)


def test_plot_of_several_configurations_has_a_panel_each():
    pytest.importorskip("matplotlib")
    figure = report.epoch_figure(one_run("a") + one_run("b", train_j=(1.0, 2.0, 3.0)))
    assert len([a for a in figure.axes if a.get_xlabel() == "epoch"]) == 2


def test_unknown_format_and_empty_records():
    with pytest.raises(ValueError, match="format"):
        report.render(one_run(), "docx")
    with pytest.raises(ValueError, match="no records"):
        report.render([], "md")


def test_records_without_training_are_reported_as_what_they_are():
    records = [rec("p", "predict", None, 3600.0, 100, 0), rec("p", "other", None, 36.0, 0, 1)]
    text = report.render(records, "md")
    assert "No training epochs in these records" in text and "| predict | 2.00 | 1.00 | 500 | 100 |" in text
    assert "The run (no training epoch; prediction and the time between phases) used 1.01 Wh and emitted 505 mgCO2eq" in text
    assert "0 epochs" not in text and "kgCO2eq" not in text
    latex = report.render(records, "latex")
    # (No empty "Per sample" column: no row of a table without epochs has a cost per sample.)
    assert "Training &" not in latex and r"Whole run & 4.00 & 1.01 & 505 \\" in latex and "Per sample" not in latex


def crashed_and_clean():
    """Two repeats: "clean" trains epochs 0-2; "crash" is cut short in epoch 1 (300 of 1000 samples)
    and resumed, redoing epochs 1 and 2 as attempt 1."""
    clean = [rec("clean", "train", epoch, 36000.0, 1000, epoch) for epoch in range(3)]
    crash = [rec("crash", "train", 0, 36000.0, 1000, 0),
             dataclasses.replace(rec("crash", "train", 1, 9000.0, 300, 1), partial=True),
             dataclasses.replace(rec("crash", "train", 1, 36000.0, 1000, 2), attempt=1),
             dataclasses.replace(rec("crash", "train", 2, 36000.0, 1000, 3), attempt=1)]
    return clean + crash


def test_a_cut_short_epoch_is_never_averaged_with_another_runs_complete_one():
    records = crashed_and_clean()
    rows = {row["label"]: row for row in report.epoch_summary(records)}
    # The crashed run's 9 kJ partial epoch and the clean run's 36 kJ epoch 1 were one row, "22.5 ± 13.5 kJ".
    cut = rows["1 (attempt 0: cut short, redone)"]
    assert cut["run_ids"] == ["crash"] and cut["energy_kwh"]["mean"] == pytest.approx(9000.0 / KWH)
    assert cut["status"] == "cut short, redone" and not cut["in_every_run"] and cut["of_runs"] == 2
    # Epoch 1 trained whole, by attempt 0 of one run and attempt 1 of the other: one row over both.
    complete = rows["1"]
    assert complete["run_ids"] == ["clean", "crash"] and complete["in_every_run"] and complete["attempts"] == [0, 1]
    assert complete["attempt"] is None and complete["energy_kwh"]["mean"] == pytest.approx(36000.0 / KWH)
    assert list(rows) == ["0", "1", "1 (attempt 0: cut short, redone)", "2"]

    # Markdown: only the epochs of every run under the mean ± SE heading; the others apart, naming their runs.
    text = report.render(records, "md").split("## Totals")[0]
    means, _, apart = text.partition("Epochs not in every run")
    assert "| 0 | 2.00 ± 0 | 10.0 ± 0 |" in means and "| 1 | 2.00 ± 0 | 10.0 ± 0 |" in means and "cut short" not in means
    assert "| 1 (attempt 0: cut short, redone) | run crash | 2.00 | 2.50 |" in apart
    assert apart.count(" | run ") == 1 and "mean ± SE)" not in apart
    # LaTeX: one table, each such row marked with its runs; JSON: the same rows.
    latex = report.render(records, "latex")
    assert r"1 (attempt 0: cut short, redone) [run crash] & 2.00 & 2.50 &" in latex and "covers those runs only" in latex
    epochs = json.loads(report.render(records, "json"))["configurations"][0]["epochs"]
    assert [(e["label"], e["run_ids"]) for e in epochs] == [(r["label"], r["run_ids"]) for r in rows.values()]
    # A row that several but not all runs share is their mean, said as "2 of 3".
    third = [dataclasses.replace(r, run_id="crash-2") for r in records if r.run_id == "crash"]
    shared = next(r for r in report.epoch_summary(records + third) if r["label"] == "1 (attempt 0: cut short, redone)")
    assert report.covers_text(shared) == "runs crash, crash-2 (2 of 3)"


def test_a_run_resumed_at_an_epochs_end_is_pooled_epoch_by_epoch_with_its_repeats():
    """Two clean runs, and one resumed from epoch 1's end (attempt 1 trains epochs 2 and 3 whole).
    Its later epochs were rows of their own ("2 (attempt 1)", run c) and the clean runs' "2 of 3",
    though every run trained them whole: the per-epoch means covered 2 runs, the totals 3."""
    def run_of(run_id, resumed_at=None, scale=1.0):
        return [dataclasses.replace(rec(run_id, "train", epoch, 3600.0 * scale, 64, epoch), step=4 * (epoch + 1),
                                    attempt=int(resumed_at is not None and epoch >= resumed_at))
                for epoch in range(4)]

    records = run_of("a") + run_of("b", scale=1.5) + run_of("c", resumed_at=2, scale=2.0)
    rows = report.epoch_summary(records)
    assert [(row["label"], row["runs"], row["in_every_run"]) for row in rows] == [(str(e), 3, True) for e in range(4)]
    assert rows[2]["attempts"] == [0, 1] and rows[2]["attempt"] is None
    per_epoch = sum(row["energy_kwh"]["mean"] for row in rows)
    assert per_epoch == pytest.approx(report.summary(records)["total"]["train_energy_kwh"]["mean"])
    text = report.render(records, "md")
    assert "Epochs not in every run" not in text and "| 2 | 2.00 ± 0 | 1.50 ± 0.29 |" in text
    # An epoch cut short and redone stays a row of its attempt; its whole retraining is an epoch as any.
    crash = run_of("d", resumed_at=2) + [dataclasses.replace(rec("d", "train", 2, 900.0, 16, 9), partial=True)]
    rows = {row["label"]: row for row in report.epoch_summary(run_of("a") + crash)}
    assert rows["2"]["runs"] == 2 and rows["2 (attempt 0: cut short, redone)"]["run_ids"] == ["d"]


def test_an_epoch_whose_samples_are_not_known_is_said_in_the_configuration():
    """A resume inside an epoch after a crash leaves its count unknown: the configuration left it out
    and read as one of whole epochs, two configurations with one description (headings, LaTeX
    captions and JSON all alike)."""
    clean = [dataclasses.replace(rec("clean", "train", e, 3600.0, 100, e), step=10 * (e + 1)) for e in range(3)]
    resumed = [dataclasses.replace(rec("l", "train", 0, 3600.0, 100, 0), step=10),
               dataclasses.replace(rec("l", "train", 1, 2500.0, 70, 1), step=17, partial=True),
               dataclasses.replace(rec("l", "train", 1, 2100.0, 60, 2), step=20, attempt=1),
               dataclasses.replace(rec("l", "train", 2, 3600.0, 100, 3), step=30, attempt=1)]
    descriptions = [g["description"] for g in json.loads(report.render(clean + resumed, "json"))["configurations"]]
    assert "3 training epoch(s) of 100 samples in 10 steps each, sensors" in descriptions[0]
    assert "3 training epoch(s) of 100 samples in 10 steps each (epoch 1: not known), sensors" in descriptions[1]
    assert "(epoch 1: not known)" in report.render(clean + resumed, "latex")


def test_runs_cut_short_are_never_pooled_as_repeats():
    """auto_find_batch_size gives up on a batch size after an OOM: each try is a run whose only record
    is a cut-short epoch 0 with no sample counted. Those tries were pooled into "Over 4 runs of one
    configuration, training (1 epoch) used ... per run", a citable figure of failures."""
    def failed_try(run_id, energy_j):
        return [dataclasses.replace(rec(run_id, "train", 0, energy_j, 0, 0), partial=True),
                rec(run_id, "other", None, 36.0, 0, 1)]

    records = failed_try("oom-8", 40.0) + failed_try("oom-7", 44.0) + one_run("ok-a") + one_run("ok-b", scale=1.5)
    groups = report.group_runs(records)
    assert [report.run_ids(g) for _, g in groups] == [["oom-8"], ["oom-7"], ["ok-a", "ok-b"]]
    described = report.describe_configuration(groups[0][0])
    assert "1 training epoch(s), cut short (none completed)" in described and "uncounted" not in described
    assert "cut short" not in report.describe_configuration(groups[2][0])
    text = report.render(records, "md")
    assert "The training (1 epoch; cut short by an exception or interrupt, none completed) used" in text
    assert "Over 2 runs of one configuration, training (2 epochs of 1000 samples)" in text
    assert "Over 4 runs" not in text and "Over 3 runs" not in text
    # A run cut short after completing epochs says how many; resumed to the end, it is complete again.
    crashed = one_run("crash")[:2] + [dataclasses.replace(rec("crash", "train", 1, 9000.0, 300, 2), partial=True)]
    config = report.configuration(crashed)
    assert (config["epochs"], config["completed_epochs"]) == (2, 1) and report.cut_short(config)
    assert "of 1000 samples, cut short (1 completed)" in report.describe_configuration(config)
    assert not report.cut_short(report.configuration([r for r in crashed_and_clean() if r.run_id == "crash"]))


def test_an_epoch_redone_from_an_earlier_checkpoint_counts_its_samples_once_and_the_run_is_a_repeat():
    """A crash while the checkpoint of epoch 1 was written (after its record): the resume from the
    checkpoint of epoch 0 ran epoch 1 again, to the same step. Its samples were added to the first
    try's (64 for an epoch of 32), so the run was no repeat of the clean ones. An epoch that
    max_steps stopped at step 6 and a resume carried on to step 8 still adds up."""
    def whole(run_id):
        return [dataclasses.replace(rec(run_id, "train", e, 3600.0, 32, e), step=4 * (e + 1)) for e in (0, 1)]

    redone = whole("redone") + [dataclasses.replace(rec("redone", "train", 1, 3600.0, 32, 2), step=8, attempt=1)]
    continued = [dataclasses.replace(rec("continued", "train", 0, 3600.0, 32, 0), step=4),
                 dataclasses.replace(rec("continued", "train", 1, 1800.0, 16, 1), step=6),
                 dataclasses.replace(rec("continued", "train", 1, 1800.0, 16, 2), step=8, attempt=1)]
    assert report.configuration(redone)["epoch_samples"] == [[0, 32], [1, 32]]
    assert report.configuration(continued)["epoch_samples"] == [[0, 32], [1, 32]]
    groups = report.group_runs(whole("clean") + redone + continued)
    assert [report.run_ids(g) for _, g in groups] == [["clean", "redone", "continued"]]


def test_a_run_that_max_steps_ended_inside_its_last_epoch_is_no_repeat_of_whole_epochs():
    """max_steps=6 over epochs of 4 batches: epoch 1 trains 2 (16 samples), cleanly, not partial.
    It was pooled with runs of two whole epochs: "Over 3 runs ... 2 epochs of 32 samples", its
    epoch 1 averaged with theirs. Runs cut the same way are still repeats of each other."""
    def run(run_id, last_samples):
        return [rec(run_id, "train", 0, 3600.0, 32, 0), rec(run_id, "train", 1, 1800.0 * last_samples / 16, last_samples, 1)]

    records = run("whole-a", 32) + run("whole-b", 32) + run("steps-a", 16) + run("steps-b", 16)
    groups = report.group_runs(records)
    assert [report.run_ids(g) for _, g in groups] == [["whole-a", "whole-b"], ["steps-a", "steps-b"]]
    assert "2 training epoch(s) of 32 samples (epoch 1: 16)" in report.describe_configuration(groups[1][0])
    assert "(epoch" not in report.describe_configuration(groups[0][0])
    # The paper's sentence says so too (it said "2 epochs of 32 samples" for 48 trained).
    assert "training (2 epochs of 32 samples, epoch 1: 16)" in report.statement(groups[1][1])
    assert "training (2 epochs of 32 samples)" in report.statement(groups[0][1])
    # Resumed where max_steps stopped it, the epoch's two parts add up to a whole one: a repeat.
    resumed = run("resumed", 16) + [dataclasses.replace(rec("resumed", "train", 1, 1800.0, 16, 2), attempt=1)]
    assert [report.run_ids(g) for _, g in report.group_runs(run("whole-a", 32) + resumed)] == [["whole-a", "resumed"]]


def test_the_plot_marks_epochs_not_in_every_run_and_its_cumulative_is_per_run():
    pytest.importorskip("matplotlib")
    records = crashed_and_clean()
    figure = report.epoch_figure(records)
    figure.canvas.draw()
    ticks = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert ticks[0] == "0" and ticks[2] == "1\nattempt 0\ncut short\n1 of 2 runs"  # whole epochs: any attempt
    line = figure.axes[1].get_lines()[0].get_ydata()
    per_run = sum(r.co2eq_g for r in records) / 2  # the cumulative line ends at the mean run's CO2eq
    unit_factor = 1.0 if max(line) > per_run * 0.5 else 1e3
    assert line[-1] == pytest.approx(per_run * unit_factor)


@pytest.mark.slow
def test_a_real_crash_and_resume_reports_the_redone_epoch_per_attempt(tmp_path):
    """Lightning: a fit crashes in epoch 2, a new process resumes from the end of epoch 1."""
    import sys
    from pathlib import Path

    pytest.importorskip("lightning")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lightning_models import Boom, flavour, loaders, trainer_kwargs

    from greencallbacks.records import read_records

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    energy, ckpt = tmp_path / "energy", tmp_path / "ckpt"

    def fit(model, ckpt_path=None):
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=ckpt, save_last=True, save_on_train_epoch_end=True)
        trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[EnergyCallback(output_dir=energy, country="FR"), checkpoint],
                            **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)

    with pytest.raises(Boom):
        fit(TinyModel(fail_at=(2, 1)))
    fit(TinyModel(), ckpt_path=ckpt / "last.ckpt")
    records = read_records(energy)
    assert len({r.run_id for r in records}) == 1 and {r.attempt for r in records} == {0, 1}
    labels = [row["label"] for row in report.epoch_summary(records)]
    assert labels == ["0", "1", "2 (attempt 0: cut short, redone)", "2"]
    rows = report.epoch_rows(records)
    assert rows[2]["train_samples"] == 8 and rows[3]["train_samples"] == 32  # one batch before the crash; all
    text = report.render(records, "md")
    assert "| 2 (attempt 0: cut short, redone) |" in text and "1 epoch cut short by a crash and redone" in text
    total = report.summary(records)["total"]["energy_kwh"]["mean"]
    assert total == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)  # the crashed try included
    figure = report.epoch_figure(records)
    figure.canvas.draw()
    ticks = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert ticks == ["0", "1", "2\nattempt 0\ncut short", "2"]
    report.plot_epochs(records, tmp_path / "resumed.png")

    # Its last checkpoint validated in a later session (a new callback, as in a new process).
    trainer = L.Trainer(logger=False, callbacks=[EnergyCallback(output_dir=energy, country="FR")], **trainer_kwargs())
    trainer.validate(TinyModel(), loaders()[1], ckpt_path=ckpt / "last.ckpt")
    after = read_records(energy)
    # An attempt that trains nothing (Lightning 2.4 and earlier restore no callback in an
    # evaluation: the callback reads the checkpoint itself), in the totals, not among the epochs.
    assert {r.attempt for r in after} == {0, 1, 2} and "validation" in {r.phase for r in after if r.attempt == 2}
    assert [row["label"] for row in report.epoch_summary(after)] == labels
    assert "calls that trained nothing (validation: " in report.render(after, "md")


def test_a_run_that_failed_between_two_epochs_is_no_repeat_of_one_that_finished():
    """A crash after one epoch's record and before the next began (a callback's epoch start, a
    checkpoint write) leaves every epoch complete: the partial gap record is the only mark, and the
    run was pooled with a finished run of as many epochs."""
    finished = one_run("finished")
    failed = one_run("failed")[:-1] + [dataclasses.replace(rec("failed", "other", 1, 50.0, 0, 4), partial=True)]
    assert report.cut_short(report.configuration(failed)) and not report.cut_short(report.configuration(finished))
    groups = report.group_runs(finished + failed)
    assert [report.run_ids(g) for _, g in groups] == [["finished"], ["failed"]]
    assert "cut short (2 completed)" in report.describe_configuration(groups[1][0])
    # Resumed and finished, it is complete again; an evaluation that failed after training is no mark.
    resumed = failed + [dataclasses.replace(r, attempt=1, seq=r.seq + 10) for r in one_run("failed")[2:4]]
    assert not report.cut_short(report.configuration(resumed))
    test_failed = one_run("finished")[:-1] + [dataclasses.replace(rec("finished", "test", None, 9.0, 5, 9), partial=True)]
    assert not report.cut_short(report.configuration(test_failed))


def test_a_failure_in_inference_after_training_or_a_finished_resume_is_no_cut_short_training():
    def gap(run, epoch, seq, partial=False, attempt=0):
        return dataclasses.replace(rec(run, "other", epoch, 10.0, 0, seq), partial=partial, attempt=attempt)

    trained = one_run("r")[:-1] + [gap("r", 1, 4)]  # train/validation of epochs 0 and 1, the last gap
    # test() after the fit, failing before its loop (its gap partial), or a standalone validate failing.
    failed_test = trained + [gap("r", None, 5, partial=True)]
    failed_validate = trained + [gap("r", None, 5), dataclasses.replace(rec("r", "validation", 2, 5.0, 3, 6), partial=True)]
    # A crash after the last epoch (on_train_end), resumed: the resume trains nothing and ends well.
    crashed_at_the_end = one_run("r")[:-1] + [gap("r", 1, 4, partial=True)]
    resumed = crashed_at_the_end + [gap("r", None, 5, attempt=1), gap("r", 1, 6, attempt=1)]
    for records in (failed_test, failed_validate, resumed):
        assert not report.cut_short(report.configuration(records)), [(r.phase, r.epoch, r.partial) for r in records]
    assert report.cut_short(report.configuration(crashed_at_the_end))
    # Lightning 2.2-2.4: a resume validates the epoch its checkpoint ended again, then fails (in
    # that validation, or before its first batch): the run's last training failed. A checkpoint
    # validated in a later session that failed reads the same (a known limit: the safe side).
    validated_again = trained + [gap("r", None, 5, attempt=1), dataclasses.replace(rec("r", "validation", 1, 5.0, 3, 6), attempt=1),
                                 gap("r", 1, 7, partial=True, attempt=1)]
    failed_in_it = trained + [gap("r", None, 5, attempt=1),
                              dataclasses.replace(rec("r", "validation", 1, 5.0, 3, 6), partial=True, attempt=1)]
    for records in (validated_again, failed_in_it):
        assert report.cut_short(report.configuration(records)), [(r.phase, r.epoch, r.partial) for r in records]


def test_lightning_test_failing_after_a_fit_leaves_the_training_complete(tmp_path):
    pytest.importorskip("lightning")
    from greencallbacks.records import read_records
    from tests.lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class NoTestData(TinyModel):
        def test_dataloader(self):
            raise RuntimeError("no test data")

    model, callback = NoTestData(), EnergyCallback(intensity=100.0, output_dir=str(tmp_path))
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[callback], **trainer_kwargs())
    trainer.fit(model, *loaders())
    with pytest.raises(RuntimeError, match="no test data"):
        trainer.test(model)
    records = read_records(tmp_path)
    assert records[-1].partial  # the test's failure is in the records
    assert not report.cut_short(report.configuration(records))


def test_two_ranks_gpus_of_one_name_err_at_their_own_boundaries():
    """Each rank names its GPU gpu0: the two counters' boundary errors are independent, each
    counted at its own first and last boundary, not pooled into one device's."""
    records = []
    for seq in range(6):
        r = rec("ddp", "train", seq, 7200.0, 100, seq, uncertainty_j=30.0)
        parts = [{"name": "gpu0", "kind": "gpu", "method": "counter", "energy_j": 3600.0, "uncertainty_j": 30.0,
                  "rank": rank, "host": "h"} for rank in (0, 1)]
        records.append(dataclasses.replace(r, components=parts))
    # 2 x 30 J per rank, in quadrature over the two ranks (pooled: 2 x 30 J for both)
    assert report.run_totals(records)["ddp"]["uncertainty_kwh"] == pytest.approx(math.sqrt(2) * 60.0 / KWH)


def test_an_epoch_without_validation_shows_none_not_a_validation_that_cost_nothing():
    """check_val_every_n_epoch=2: epoch 0 ran no validation. Its validation cell is n/a (empty in
    CSV, null in JSON), not 0, while the epochs that did validate keep their energy and the figure
    stacks what there is."""
    records = [r for r in one_run("every-other") if not (r.phase == "validation" and r.epoch == 0)]
    rows = report.epoch_rows(records)
    assert [row["val_energy_kwh"] for row in rows] == [None, pytest.approx(3600.0 / KWH)]
    assert [row["val_co2eq_g"] for row in rows] == [None, pytest.approx(3600.0 / KWH * 500.0)]
    table = report.render(records, "md")
    epoch0 = next(line for line in table.splitlines() if line.startswith("| 0 "))
    epoch1 = next(line for line in table.splitlines() if line.startswith("| 1 "))
    assert [c.strip() for c in epoch0.split("|")][6] == "n/a"
    assert [c.strip() for c in epoch1.split("|")][6] not in ("n/a", "0")
    csv_rows = list(csv.DictReader(io.StringIO(report.render(records, "csv"))))
    assert [r["val_energy_kwh"] for r in csv_rows][0] == "" and float(csv_rows[1]["val_energy_kwh"]) > 0
    assert json.loads(report.render(records, "json"))["configurations"][0]["epochs"][0]["val_energy_kwh"] is None
    # Two seeds, one of which validated at epoch 0: a mean per run, 0 for the one that did not.
    mixed = records + one_run("seed-2")
    epoch0 = report.epoch_summary(mixed)[0]
    assert epoch0["val_energy_kwh"]["mean"] == pytest.approx(3600.0 / KWH / 2)


def test_a_component_that_stopped_counting_is_not_reported_as_measured():
    """A GPU lost in epoch 1: its later records keep `method: counter` with the meter's
    `stopped counting at ...` note and 0 J. The report said every component was measured, the
    paper sentence only 'GPU energy from NVML energy counters', the epochs 'gpu0:counter'."""
    note = "stopped counting at 2026-12-03T10:00:05Z (gpu0 (GPU-1): NVML energy counter failed: GPU is lost)"
    records = []
    for seq, epoch in enumerate(range(3)):
        r = rec("lost", "train", epoch, 3600.0, 100, seq)
        parts = [{**c, "method": "counter"} for c in r.components]
        parts[1] = {**parts[1], "kind": "cpu", "method": "counter", "source": "RAPL counters"}
        if epoch >= 1:
            parts[0] = {**parts[0], "energy_j": 0.0, "note": note}
        records.append(dataclasses.replace(r, components=parts))
    text = report.render(records, "md")
    assert "Every component was measured" not in text
    assert "Not counted after a sensor failed: gpu0" in text and "lower bound" in text
    assert "gpu0 not counted after its sensor failed" in report.statement(records)
    assert [row["methods"] for row in report.epoch_rows(records)] == [
        "cpu:counter, gpu0:counter", "cpu:counter, gpu0:stopped", "cpu:counter, gpu0:stopped"]
    # Two attempts that each lost it: both notes are kept, not the last one alone.
    second = "stopped counting at 2026-12-03T11:00:00Z (gpu0 (GPU-1): NVML energy counter failed: Unknown Error)"
    again = dataclasses.replace(records[-1], attempt=1, seq=9,
                                components=[{**records[-1].components[0], "note": second}, records[-1].components[1]])
    [gpu] = [h for h in report.hardware(records + [again]) if h["name"] == "gpu0"]
    assert note in gpu["note"] and second in gpu["note"]


def test_trainings_at_other_batch_sizes_are_no_repeats_of_each_other():
    """Two trials of a sweep, batch 4 and batch 8 over one data set: the same samples per epoch,
    the same epochs, so they were pooled as repeats (mean ± SE over 2 runs). Their steps per epoch
    (the global step at each epoch's end) tell them apart; seeds of one batch size still pool."""
    def run(run_id, steps):
        return [dataclasses.replace(r, step=steps * (r.epoch + 1)) if r.phase == "train" else r for r in one_run(run_id)]

    groups = report.group_runs(run("batch-8", 4) + run("batch-4", 8))
    assert [sorted({r.run_id for r in group}) for _, group in groups] == [["batch-8"], ["batch-4"]]
    assert [config["steps_per_epoch"] for config, _ in groups] == [4, 8]
    (config, group), = report.group_runs(run("seed-1", 8) + run("seed-2", 8))
    assert sorted({r.run_id for r in group}) == ["seed-1", "seed-2"]


def test_a_run_whose_gpu_stopped_counting_is_no_repeat_of_runs_that_counted_it_throughout():
    """Three seeds, the GPU lost at epoch 1 in one: the epoch's mean pooled a lower bound with
    full values (2.1 ± 1.4 mWh). That run is a configuration of its own now, named as such."""
    note = "stopped counting at 2026-12-03T10:00:05Z (gpu0 (GPU-1): NVML energy counter failed: GPU is lost)"
    lost = [dataclasses.replace(r, components=[{**r.components[0], "energy_j": 0.0, "note": note}, r.components[1]])
            if r.epoch == 1 else r for r in one_run("lost")]
    groups = report.group_runs(lost + one_run("seed-2") + one_run("seed-3"))
    assert [sorted({r.run_id for r in group}) for _, group in groups] == [["lost"], ["seed-2", "seed-3"]]
    assert "gpu0:stopped" in report.describe_configuration(groups[0][0])


def test_an_epoch_retried_in_the_same_attempt_is_completed():
    """A loop of one's own retrying an epoch after an out-of-memory error (the pattern the
    ``Tracker.phase`` docstring shows): the failed try is a partial record, the retry a whole one,
    both attempt 0. The run finished its 3 epochs, but the report said "cut short by an exception
    or interrupt, 2 completed", and such a run is never pooled with its repeats."""
    failed = dataclasses.replace(rec("r", "train", 1, 10.0, 16, 2), partial=True)
    records = [rec("r", "train", 0, 50.0, 64, 0), failed, rec("r", "train", 1, 50.0, 64, 4),
               rec("r", "train", 2, 50.0, 64, 6)]
    config = report.configuration(records)
    assert config["completed_epochs"] == 3 and not report.cut_short(config)
    assert "cut short" not in report.statement(records)


def test_a_group_written_by_two_versions_names_both():
    """Repeats run with two versions (or a run resumed after an upgrade): the provenance, the
    statement and the JSON named only the first record's version."""
    old = [dataclasses.replace(r, tool_version="0.1.0") for r in one_run("run-a")]
    new = [dataclasses.replace(r, tool_version="0.2.0.dev0+g0123456789ab") for r in one_run("run-b")]
    text = report.render(old + new, "md")
    assert "Tool: greencallbacks 0.1.0 and 0.2.0.dev0+g0123456789ab." in text
    assert "measured with greencallbacks 0.1.0 and 0.2.0.dev0+g0123456789ab" in text
    group = json.loads(report.render(old + new, "json"))["configurations"][0]
    assert group["tool_versions"] == ["0.1.0", "0.2.0.dev0+g0123456789ab"]
    assert "measured with greencallbacks 9.9.9;" in report.render(one_run(), "md")


def test_a_run_begun_past_epoch_0_says_its_steps_per_epoch():
    """A KerasTuner Hyperband trial goes on from another trial's weights in a model built anew, its
    training from epoch 2 at optimizer step 0; a fit from ``initial_epoch`` of a model whose
    optimizer kept its step begins at that step. The configuration left the steps out (only epoch 0
    was counted from the training's first step, and a later one from the epoch before it)."""
    def run_from(run_id, first_epoch, began_at):
        other = dataclasses.replace(rec(run_id, "other", None, 10.0, 0, 0), step=began_at)
        return [other] + [dataclasses.replace(rec(run_id, "train", e, 3600.0, 100, i + 1), step=began_at + 4 * (i + 1))
                          for i, e in enumerate(range(first_epoch, first_epoch + 2))]

    for records in (run_from("hyperband", 2, 0), run_from("continued", 2, 8), run_from("single", 3, 0)[:2]):
        [config] = json.loads(report.render(records, "json"))["configurations"]
        assert " of 100 samples in 4 steps each, sensors" in config["description"], config["description"]
