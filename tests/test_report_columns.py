"""The report's tables as a paper takes them: one notation per column, and no column that no row fills."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import time

import pytest

from greencallbacks import report
from greencallbacks.records import read_records
from tests.fakes.scripted import ScriptedSensor

# A table cell that is a number, or a mean ± SE.
NUMBER = re.compile(r"^\$?(-?[\d.]+(?:e-?\d+| \\times 10\^\{-?\d+\})?)(?:(?: ± | \\pm )([\d.]+(?:e-?\d+| \\times 10\^\{-?\d+\})?))?\$?$")


def _lightning():
    pytest.importorskip("torch")
    pytest.importorskip("lightning")
    from tests.lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    return L, EnergyCallback, TinyModel, loaders, trainer_kwargs


def _callback(EnergyCallback, out):
    return EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0, output_dir=str(out))


def _notations(cells):
    """The notation of each number in ``cells``: scientific or plain (a bare 0, or n/a: either)."""
    found = set()
    for cell in cells:
        match = NUMBER.match(cell.strip())
        if match and float(match.group(1).split(" ")[0]) != 0:
            found.add("e" in match.group(1) or "times" in match.group(1))
    return found


def _markdown_columns(table: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("|")][2:]
    return [list(column) for column in zip(*rows)]


def _latex_columns(latex: str) -> list[list[str]]:
    body = latex.split("\\midrule\n", 1)[1].split("\\bottomrule")[0]
    rows = [line.rstrip(" \\").split(" & ") for line in body.splitlines() if "&" in line]
    return [list(column) for column in zip(*rows)]


def test_a_mean_and_se_column_keeps_one_notation(tmp_path):
    """Three repeats of a real fit whose epoch 1 took the same time to 3 µs in each (epoch 0 to 1 ms):
    epoch 1's mean ± SE needs 7 decimals and read ``1.48776e-2 ± 0.00027e-2`` beside epoch 0's
    ``0.016370 ± 0.000093``, one column in two notations. Now the column shares one exponent, and
    each cell keeps two significant digits of its SE."""
    L, EnergyCallback, TinyModel, loaders, trainer_kwargs = _lightning()
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[_callback(EnergyCallback, tmp_path)], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    fitted = read_records(tmp_path)
    slower = {0: 1e-3, 1: 3e-6}  # seconds each repeat's epoch took more than the one before
    records = []
    for k in range(3):  # the repeats: the same run, its training a little slower in each, at the same power
        for r in fitted:
            factor = 1 + k * slower[r.epoch] / r.duration_s if r.phase == "train" else 1.0
            records.append(dataclasses.replace(r, run_id=f"seed{k}", duration_s=r.duration_s * factor,
                                               energy_kwh=r.energy_kwh * factor, it_energy_kwh=r.it_energy_kwh * factor,
                                               co2eq_g=r.co2eq_g * factor))
    md = report.render(records, "md")
    table = md.split("## Per epoch")[1].split("## Totals")[0]
    columns = _markdown_columns(table)
    assert any("e-" in cell for cell in columns[1]), columns[1]  # the case: epoch 1's time needs an exponent
    for column in columns[1:]:
        assert len(_notations(column)) <= 1, column
    seconds = report.summary(records)["epochs"]
    for cell, row in zip(columns[1], seconds):  # two significant digits of each SE, at the column's exponent
        mean, error = NUMBER.match(cell.strip()).groups()
        assert float(mean) == pytest.approx(row["seconds"]["mean"], abs=float(error))
        assert float(error) == pytest.approx(row["seconds"]["se"], rel=0.06)
        assert len(error.split("e")[0].replace(".", "").lstrip("0")) == 2
    latex = report.render(records, "latex")
    for column in _latex_columns(latex)[1:]:
        assert len(_notations(column)) <= 1, column
    phases = _markdown_columns(md.split("## Totals by phase")[1].split("## Hardware")[0])
    for column in phases[1:4]:
        assert len(_notations(column)) <= 1, column


def test_a_run_without_a_training_epoch_prints_no_empty_column(tmp_path):
    """A real validate and test with no fit: the LaTeX table printed a "Per sample (J)" column that
    no row fills (only the whole run's row, which has no cost per sample). Markdown has no such
    column (no per-epoch table); CSV keeps its stable header (a reader indexes it by name), no row."""
    L, EnergyCallback, TinyModel, loaders, trainer_kwargs = _lightning()
    trainer = L.Trainer(logger=False, callbacks=[_callback(EnergyCallback, tmp_path)], **trainer_kwargs())
    model = TinyModel()
    trainer.validate(model, loaders()[1], verbose=False)
    trainer.test(model, loaders()[1], verbose=False)
    records = read_records(tmp_path)
    assert {r.phase for r in records} == {"validation", "test", "other"}
    latex = report.render(records, "latex")
    assert "Per sample" not in latex and r"\begin{tabular}{lrrr}" in latex
    # Its caption names the phases it has: "every phase (training, evaluation and ...)" of no training.
    assert "Whole run: every phase (validation, test and the time between phases)." in latex
    (whole,) = [line for line in latex.splitlines() if line.startswith("Whole run & ")]
    assert whole.count("&") == 3 and not whole.endswith("& \\\\")
    for column in _latex_columns(latex):
        assert any(cell.strip() for cell in column), column
    md = report.render(records, "md")
    for table in re.findall(r"(?:^\|.*\n?)+", md, flags=re.M):
        for column in _markdown_columns(table):
            assert any(cell.strip() for cell in column), (column, table)
    rows = list(csv.reader(io.StringIO(report.render(records, "csv"))))
    assert rows == [list(report.CSV_COLUMNS)]
