"""``lifecycle`` of a run resumed into another directory, given one directory alone: its figures
are the remnant's, and it says so, as ``report`` does (a real Lightning crash and resume)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
import time

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from lightning_models import Boom, flavour, loaders, trainer_kwargs  # noqa: E402
from greencallbacks.cli import main  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402


def _crashed_then_resumed_elsewhere(tmp_path):
    """Fit 3 epochs into ``first``, crashing in epoch 2; resumed from its last checkpoint into ``second``."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    first, second, ckpt = tmp_path / "first", tmp_path / "second", tmp_path / "ckpt"

    def fit(out, model, ckpt_path=None):
        callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0,
                                  output_dir=str(out))
        saver = L.callbacks.ModelCheckpoint(dirpath=ckpt, save_last=True)
        trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[callback, saver],
                            **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        return trainer

    with pytest.raises(Boom):
        fit(first, TinyModel(fail_at=(2, 1)))
    fit(second, TinyModel(), ckpt / "last.ckpt").test(TinyModel(), loaders()[1])
    return first, second


def _lifecycle(capsys, *paths) -> dict:
    capsys.readouterr()
    assert main(["lifecycle", *map(str, paths), "--inferences", "1000", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_lifecycle_of_one_directory_of_a_run_resumed_elsewhere_says_its_records_are_a_part(tmp_path, capsys):
    """Regression: given the second directory alone, T, V and LC were the resume's (here 1 epoch of
    3 and some 40 % of the run's energy) with no note, where ``report`` says which attempts and what
    share of the summary's energy the records lack."""
    first, second = _crashed_then_resumed_elsewhere(tmp_path)
    whole = _lifecycle(capsys, first, second)
    part = _lifecycle(capsys, second)
    assert part["training_j"] < whole["training_j"]
    assert not any("not in these records" in n or "records missing" in n for n in whole["notes"]), whole["notes"]
    said = [n for n in part["notes"] if "attempt(s) 0 of the run are not in these records" in n]
    assert said and "pass every directory" in said[0], part["notes"]
    assert any(n.startswith("records missing from run") and "energy-summary.json counts" in n for n in part["notes"]), part["notes"]
    # The text output carries the same notes.
    capsys.readouterr()
    assert main(["lifecycle", str(second), "--inferences", "1000"]) == 0
    assert "note: attempt(s) 0 of the run are not in these records" in capsys.readouterr().out


def test_whatif_of_one_directory_of_a_run_resumed_elsewhere_says_it_prices_a_part(tmp_path, capsys):
    """Regression: ``whatif`` priced the resume's records alone as the run, with no note."""
    first, second = _crashed_then_resumed_elsewhere(tmp_path)
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    series = tmp_path / "series.csv"
    series.write_text("timestamp,gco2eq_per_kwh\n" + "".join(
        f"{(start + timedelta(hours=h)).isoformat()},{200 + 10 * (h % 24)}\n" for h in range(96)))

    def note(path) -> str | None:
        capsys.readouterr()
        assert main(["whatif", str(path), "--intensity", str(series), "--json"]) == 0
        return json.loads(capsys.readouterr().out).get("records_missing_note")

    assert note(tmp_path) is None  # both directories, through the one above them: the whole run
    said = note(second)
    assert said is not None and "attempt(s) 0 of the run are not in these records" in said
    assert "energy-summary.json counts" in said


def test_whatif_of_both_directories_of_a_run_resumed_elsewhere_prices_it_whole(tmp_path, capsys):
    # whatif took one path: a run that wrote in two directories could be priced whole only from a
    # directory above both. It takes several, as report and lifecycle do.
    first, second = _crashed_then_resumed_elsewhere(tmp_path)
    series = tmp_path / "series.csv"
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    series.write_text("timestamp,gco2eq_per_kwh\n" + "".join(
        f"{(start + timedelta(hours=h)).isoformat()},{200 + 10 * (h % 24)}\n" for h in range(96)))
    capsys.readouterr()
    assert main(["whatif", str(first), str(second), "--intensity", str(series), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert main(["whatif", str(tmp_path), "--intensity", str(series), "--json"]) == 0
    above = json.loads(capsys.readouterr().out)
    assert "records_missing_note" not in both and both == above
