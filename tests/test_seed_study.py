"""The seed-study example runs (quick settings) and produces its three tables, JSON and plot."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "seed_study.py"


def load_example():
    spec = importlib.util.spec_from_file_location("seed_study", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_fit_by_hand():
    fit = load_example().linear_fit([1, 2, 3, 4], [3, 5, 7, 9])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)
    noisy = load_example().linear_fit([0, 1, 2], [0, 2, 1])
    assert noisy["r2"] == pytest.approx(0.25)


@pytest.mark.slow
def test_quick_run_prints_three_tables_and_writes_json_and_png(tmp_path, capsys):
    study = load_example()
    results = study.main(["--quick", "--out", str(tmp_path), "--intensity", "100"])
    printed = capsys.readouterr().out
    for heading in ("## (a) Training energy vs epochs", "## (b) Training energy vs data-set size", "## (c) Training overhead"):
        assert heading in printed
    assert "Sensors:" in printed and "Carbon intensity: 100 gCO2eq/kWh" in printed

    saved = json.loads((tmp_path / "seed-study.json").read_text())
    assert [row["depth"] for row in saved["overhead"]] == [2, 4]
    for row in saved["epochs"]:
        assert row["epochs"] == [1, 2, 3] and row["train_j"] == sorted(row["train_j"])  # cumulative
        assert -1e9 < row["fit"]["r2"] <= 1.0
    for row in saved["sizes"]:
        assert len(row["train_j"]) == 4
    for row in saved["overhead"]:
        assert row["inference_j_per_sample"] is None or row["inference_j_per_sample"] >= 0
    # Estimated components are named in the output when there are any.
    if saved["estimated_components"]:
        assert "Estimated, not measured" in printed
    # Each run's records are on disk, readable by the report and lifecycle commands.
    from greencallbacks.records import read_records

    records = read_records(tmp_path / "runs" / "depth2-epochs")
    assert {r.phase for r in records} >= {"train", "predict"}
    assert sum(1 for r in records if r.phase == "train") == 3
    png = (tmp_path / "seed-study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 100
    assert results["wall_s"] < 60
