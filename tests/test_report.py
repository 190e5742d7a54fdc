"""Reports: every format carries the records' numbers; several runs give mean ± SE; LaTeX and PNG are well formed."""

from __future__ import annotations

import csv
import io
import json
import math
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
            {"name": "gpu0", "kind": "gpu", "method": method, "energy_j": 0.75 * energy_j, "uncertainty_j": uncertainty_j},
            {"name": "cpu", "kind": "cpu", "method": "estimated", "energy_j": 0.25 * energy_j, "uncertainty_j": 0.0},
        ],
        uncertainty_kwh=uncertainty_j / KWH, tool_version="9.9.9",
    )


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
    assert "| 0 | 2.00 | 1.000e-02 | 5.000e+00 | 36 | 1.0e-04 | cpu:estimated, gpu0:counter |" in text
    assert "| 1 | 2.00 | 2.000e-02 | 1.000e+01 | 72 |" in text
    assert "Totals by phase" in text and "| test |" in text
    assert "| gpu0 | gpu | counter | 75% |" in text
    assert "Training used 0.0325 kWh" in text  # (36 + 72 + 7.2 + 1.8) kJ
    assert "greencallbacks 9.9.9" in text and "GPU energy from NVML energy counters" in text
    assert "CPU energy estimated" in text
    assert "(± 0.0002 kWh sensor uncertainty)" in text  # 2 x 360 J, added linearly


def test_markdown_of_several_runs_says_mean_and_se():
    text = report.render(three_runs(), "md")
    assert "mean ± standard error over the 3 runs" in text
    se = 0.0025 / math.sqrt(3)
    assert f"1.250e-02 ± {se:.3e}" in text
    assert "Each of 3 training runs used" in text


def test_json_matches_the_records():
    data = json.loads(report.render(three_runs(), "json"))
    assert data["runs"] == ["seed-1", "seed-2", "seed-3"]
    assert data["epochs"][1]["energy_kwh"]["mean"] == pytest.approx(0.025)
    assert data["phases"]["test"]["energy_kwh"]["mean"] == pytest.approx(1800 * 1.25 / KWH)
    assert data["carbon"]["g_per_kwh"] == pytest.approx(500.0)
    assert {h["method"] for h in data["hardware"]} == {"counter", "estimated"}
    assert data["epochs"][0]["j_per_sample"]["mean"] == pytest.approx(45.0)


def test_csv_has_one_row_per_run_and_epoch_with_the_records_values():
    rows = list(csv.DictReader(io.StringIO(report.render(one_run(), "csv"))))
    assert [(r["run_id"], r["epoch"]) for r in rows] == [("run-a", "0"), ("run-a", "1")]
    assert float(rows[0]["energy_kwh"]) == pytest.approx(0.01)
    assert float(rows[1]["co2eq_g"]) == pytest.approx(10.0)
    assert float(rows[0]["uncertainty_kwh"]) == pytest.approx(360.0 / KWH)
    assert rows[0]["intensity_source"] == "Grid_test 100% source"


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
    assert r"1.250e-02 $\pm$" in text
    assert "Mean $\\pm$ standard error over 3 runs" in text
    assert "miles driven" in text and "EPA" in text


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine installed")
def test_latex_compiles(tmp_path):
    body = report.render(three_runs(), "latex", with_equivalents=True, compare=["FR", "US-CA"])
    document = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body + "\\end{document}\n"
    (tmp_path / "report.tex").write_text(document, encoding="utf-8")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "report.pdf").stat().st_size > 0


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
    path = tmp_path / "energy.png"
    report.plot_epochs(three_runs(), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width > 100 and height > 100


def test_unknown_format_and_empty_records():
    with pytest.raises(ValueError, match="format"):
        report.render(one_run(), "docx")
    with pytest.raises(ValueError, match="no records"):
        report.render([], "md")
