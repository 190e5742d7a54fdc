"""Numbers a researcher pastes from ``report`` and ``whatif`` into a paper, on records a run can
hold: a clean grid's intensity, and a record too short or too small to divide by."""

from __future__ import annotations

import csv
import dataclasses
import io

import pytest

from greencallbacks import report
from greencallbacks.whatif import whatif

from test_report import one_run


def priced_at(records, g_per_kwh):
    return [dataclasses.replace(r, intensity_gco2eq_per_kwh=g_per_kwh, co2eq_g=r.energy_kwh * g_per_kwh) for r in records]


@pytest.mark.parametrize("g_per_kwh, said", [(0.4, "0.40"), (2.4, "2.4"), (56.039, "56"), (9.96, "10")])
def test_a_clean_grids_intensity_is_cited_to_the_digits_it_has(g_per_kwh, said):
    """A grid given as 0.4 gCO2eq/kWh (a supplier's figure, a clean cloud region's 2.4) read
    "at 0 gCO2eq/kWh" beside the emissions it priced: whole grams, in every format."""
    records = priced_at(one_run(), g_per_kwh)
    md = report.render(records, "md", compare=["FR"])
    assert f"Carbon intensity: {said} gCO2eq/kWh (energy-weighted)" in md
    assert f", at {said} gCO2eq/kWh (" in md
    latex = report.render(records, "latex", compare=["FR"])
    assert f", at {said} gCO$_2$eq/kWh (" in latex and "in FR (56 gCO$_2$eq/kWh)" in latex


def test_whatif_prices_a_record_of_next_to_no_time_as_an_instant_not_infinity(tmp_path):
    """A record whose duration_s is subnormal (1e-320 s) had a power past the largest float: every
    scenario read "inf g", its saving "nan" %."""
    series = tmp_path / "series.csv"
    series.write_text("timestamp,gco2eq_per_kwh\n2026-11-23T09:00:00Z,100\n2026-11-23T11:00:00Z,300\n"
                      "2026-11-23T13:00:00Z,300\n")
    records = [dataclasses.replace(r, start_time=f"2026-11-23T10:00:{2 * r.seq:02d}+00:00") for r in one_run()]
    records[1] = dataclasses.replace(records[1], duration_s=1e-320)
    result = whatif(records, series, window_h=0)
    total_kwh = sum(r.energy_kwh for r in records)
    assert result.as_recorded.co2eq_g == pytest.approx(total_kwh * 100)
    assert "inf" not in result.to_markdown() and "nan" not in result.to_markdown()


def test_the_csv_leaves_a_ratio_that_overflows_empty_as_json_writes_null():
    """An edited record of 1e-320 kWh beside its CO2eq gave an intensity of "inf" in the CSV."""
    records = one_run()
    records[0] = dataclasses.replace(records[0], energy_kwh=1e-320)
    rows = list(csv.DictReader(io.StringIO(report.render(records, "csv"))))
    assert rows[0]["intensity_gco2eq_per_kwh"] == "" and rows[1]["intensity_gco2eq_per_kwh"] == "500"
    assert "inf" not in report.render(records, "csv")


def test_a_run_measured_by_no_sensor_is_not_said_to_be_measured_by_counters(tmp_path):
    """A meter given no sensor (``sensors=[]``) records 0 J; its report said "Every component was
    measured by a hardware counter or sampled power" and its LaTeX caption "Measured by: ."."""
    from greencallbacks import Carbon, Meter, Tracker
    from greencallbacks.records import read_records

    with Tracker(carbon=Carbon(country="FR"), output_dir=tmp_path).start(Meter([])) as tracker:
        with tracker.phase("train", 0):
            tracker.add_samples(3)
    records = read_records(tmp_path)
    md = report.render(records, "md")
    assert "Every component was measured" not in md and "No record names a component it measured" in md
    latex = report.render(records, "latex")
    assert "Measured by: ." not in latex and "Measured by: no component recorded." in latex
    counted = [dataclasses.replace(r, components=r.components[:1]) for r in one_run()]  # the GPU's counter alone
    assert "Every component was measured by a hardware counter" in report.render(counted, "md")


def test_a_plot_that_cannot_be_drawn_fails_before_the_report_is_printed(tmp_path, capsys):
    """Records with no training epoch (a validate session) printed the whole report, then "no training
    epochs to plot" with exit 2: `report ... --plot f.png > paper.md` kept a report and an error."""
    pytest.importorskip("matplotlib")
    from greencallbacks.cli import main
    from greencallbacks.records import RecordWriter

    from test_report import rec

    writer = RecordWriter(tmp_path / "energy-records.jsonl")
    for record in (rec("v", "validation", None, 360.0, 100, 0), rec("v", "other", None, 36.0, 0, 1)):
        writer.write(record)
    with pytest.raises(SystemExit) as raised:
        main(["report", str(tmp_path), "--plot", str(tmp_path / "f.png")])
    out, err = capsys.readouterr()
    assert raised.value.code == 2 and out == "" and err.count("\n") == 1 and "no training epochs to plot" in err
    assert main(["report", str(tmp_path)]) == 0 and "## Totals by phase" in capsys.readouterr().out


def test_small_equivalents_and_zones_compared_read_as_a_paper_writes_them():
    """A run of 11.7 J (1.6 mgCO2eq) read "4.06e-06 miles driven" in both formats, and "1.82e-04
    gCO2eq in FR" in LaTeX's sentence after a statement in mgCO2eq."""
    import re

    records = one_run(scale=1e-4)
    latex = report.render(records, "latex", with_equivalents=True, compare=["FR"])
    typeset = "\n".join(line for line in latex.splitlines() if not line.startswith("%"))
    assert not re.search(r"\de[-+]?\d", typeset), typeset
    assert re.search(r"This is about \$4\.06 \\times 10\^\{-6\}\$ miles driven", typeset)
    assert re.search(r" or \$1\.83 \\times 10\^\{-7\}\$ gallons of gasoline", typeset)
    assert re.search(r"would have emitted 0\.18\d mgCO\$_2\$eq in FR", typeset)
    md = report.render(records, "md", with_equivalents=True)
    assert "- 4.06 × 10^-6 miles driven" in md and "- 1.83 × 10^-7 gallons of gasoline" in md
    bigger = report.render(one_run(), "md", with_equivalents=True)  # 16.3 g: plain, as before
    assert "- 0.0406 miles driven" in bigger and "- 0.00183 gallons" in bigger
