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
    study.main(["--quick", "--out", str(tmp_path), "--intensity", "100"])
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


@pytest.mark.parametrize("argv, says", [
    (["--country", "XX"], "argument --country: unknown country 'XX'"),
    (["--intensity", "5000"], "argument --intensity: intensity must be a finite number of gCO2eq/kWh between 0 and 2000"),
    (["--intensity", "lots"], "argument --intensity: must be a number of gCO2eq/kWh, got 'lots'"),
    (["--threads", "-1"], "argument --threads: must be an integer >= 0, got '-1'"),
    (["--device", "tpu"], "argument --device: must be cpu, cuda or cuda:<index>, got 'tpu'"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 2 (a line is fitted through the epochs), got '0'"),
    (["--epochs", "1"], "argument --epochs: must be an integer >= 2"),
    (["--width", "0"], "argument --width: must be an integer >= 1, got '0'"),
    (["--samples", "0"], "argument --samples: must be an integer >= 1, got '0'"),
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["--size-epochs", "0"], "argument --size-epochs: must be an integer >= 1, got '0'"),
    (["--sizes", "512,512"], "argument --sizes: must be at least two different data-set sizes"),
])
def test_bad_flags_are_one_line_and_exit_2_before_any_training(argv, says, tmp_path, capsys):
    """--country XX, --threads -1 and --device tpu gave tracebacks; --epochs, --width, --samples 0
    a ZeroDivisionError once training had run; --batch-size 0 a ValueError from range()."""
    with pytest.raises(SystemExit) as raised:
        load_example().main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


class Stop(Exception):
    pass


def settings_of(argv, monkeypatch) -> dict:
    """The settings ``main`` would run the study with (the study itself is not run)."""
    study, seen = load_example(), []

    def record(args):
        seen.append(args)
        raise Stop

    monkeypatch.setattr(study, "run_study", record)
    with pytest.raises(Stop):
        study.main(argv)
    return {name: getattr(seen[0], name) for name in study.FULL}


def test_quick_sets_only_the_sizes_not_given(monkeypatch, tmp_path):
    """--quick replaced explicit sizes with its own, silently: --quick --epochs 2 ran 3 epochs."""
    study = load_example()
    quick = settings_of(["--quick", "--epochs", "2", "--width", "16", "--out", str(tmp_path)], monkeypatch)
    assert quick == {**study.QUICK, "epochs": 2, "width": 16}
    full = settings_of(["--samples", "100", "--out", str(tmp_path)], monkeypatch)
    assert full == {**study.FULL, "samples": 100}
