"""The demo: a small MLP trained with the Lightning callback, a per-epoch table, records and a report."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("lightning", reason="the demo trains with Lightning")

from greencallbacks.records import read_records
from greencallbacks.report import format_epoch_table
from greencallbacks.textformat import energy_text, mass_text

pytestmark = pytest.mark.slow


def test_run_demo_prints_table_and_writes_records_and_report(tmp_path, capsys):
    from greencallbacks.demo import run_demo

    result = run_demo(tmp_path, epochs=3, samples=512, intensity=100.0)
    printed = capsys.readouterr().out

    records = read_records(tmp_path)
    train = [r for r in records if r.phase == "train"]
    assert [r.epoch for r in train] == [0, 1, 2]
    assert all(r.energy_kwh > 0 and r.samples == 512 * 4 // 5 for r in train)
    assert {r.phase for r in records} >= {"train", "validation", "test"}
    assert all(r.intensity_gco2eq_per_kwh == pytest.approx(100.0) for r in records)
    assert len(result.records) == len(records)

    # The printed table is the report's table, with one row per epoch and how it was measured.
    assert result.table == format_epoch_table(result.records)
    assert result.table in printed
    rows = [line for line in result.table.splitlines()[2:]]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "1", "2"]
    methods = {c["method"] for r in train for c in r.components}
    assert all(any(f":{m}" in row for m in methods) for row in rows)
    if "estimated" in methods:  # said plainly, in the output and the report
        assert "Estimated, not measured" in printed
    # The total in the units of the table, not in scientific notation.
    total = energy_text(result.summary["energy_kwh"])
    assert f"Total: {total}, {mass_text(result.summary['co2eq_g'])}" in printed
    assert "e-0" not in printed.split("Total:")[1].splitlines()[0]

    # The report (its layout belongs to greencallbacks.report) names the run and says what is estimated.
    report = result.report_path.read_text()
    assert result.report_path.parent == tmp_path
    assert records[0].run_id in report
    if "estimated" in methods:
        assert "estimated" in report.lower()
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert result.summary == summary
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    # The callback's values reached the demo's logger too: one per epoch.
    with open(tmp_path / "lightning-logs" / "version_0" / "metrics.csv", newline="") as handle:
        logged = [float(row["energy_kwh"]) for row in csv.DictReader(handle) if row["energy_kwh"]]
    assert logged == pytest.approx([r.energy_kwh for r in train], rel=1e-5)


def test_demo_command_line(tmp_path, capsys):
    from greencallbacks.cli import main

    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--country", "FR"]) == 0
    printed = capsys.readouterr().out
    assert "| 0 |" in printed
    records = read_records(tmp_path)
    assert [r.epoch for r in records if r.phase == "train"] == [0]
    assert all(r.intensity_zone.upper().startswith("FR") for r in records)


def test_run_demo_rejects_bad_epochs(tmp_path):
    from greencallbacks.demo import run_demo

    with pytest.raises(ValueError, match="epochs"):
        run_demo(tmp_path, epochs=0)
