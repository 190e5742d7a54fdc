"""Embodied CO2eq of a run that ran partly where no footprint is known (resumed on another GPU,
or with ``embodied=False``): its figure covers only part of the run, and every output says so."""

from __future__ import annotations

import json

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.cli import main
from greencallbacks.embodied import amortised_g, footprints
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock
from tests.test_embodied_tracker import H100, Described
from tests.test_tracker import run_epochs


def _run(tmp_path, models: list[str | None], embodied=(None, None)) -> FakeClock:
    """One attempt per entry of ``models`` (the GPU model its sensor names; None: not known), each
    resumed from the one before, 1 epoch each (14 s with its gaps)."""
    clock, state = FakeClock(), None
    for model, setting in zip(models, embodied):
        tracker = Tracker(carbon=Carbon(intensity=400.0), output_dir=tmp_path, embodied=setting)
        if state is not None:
            tracker.load_state_dict(state)
        tracker.start(Meter([Described("gpu0", clock, model=model)], fallback=None, clock=clock,
                            wall_clock=lambda: clock() + 1.7e9))
        run_epochs(tracker, clock, epochs=1)
        state = tracker.state_dict()
    return clock


def _report_json(tmp_path, capsys) -> dict:
    """The report of the run's one configuration, as JSON."""
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    (configuration,) = json.loads(capsys.readouterr().out)["configurations"]
    return configuration


@pytest.mark.parametrize("models", [[H100, None], [None, H100]], ids=["figure-then-none", "none-then-figure"])
def test_an_embodied_figure_covering_part_of_the_run_says_which_part(tmp_path, capsys, models):
    # Before: the summary gave one attempt's 17.1 mg as the run's embodied CO2eq (none-then-
    # figure: with nothing missing), and the statement for a paper said "amortised over the run"
    # of the 28 s run, of which 14 s were billed.
    _run(tmp_path, models)
    records = read_records(tmp_path)
    billed = [r for r in records if r.embodied_co2eq_g is not None]
    assert 0 < len(billed) < len(records)
    billed_s, run_s = sum(r.duration_s for r in billed), sum(r.duration_s for r in records)
    assert billed_s == pytest.approx(run_s / 2)
    grams = sum(r.embodied_co2eq_g for r in billed)
    assert grams == pytest.approx(amortised_g(footprints()["H100 SXM"].kgco2eq, billed_s))

    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["embodied_co2eq_g"] == pytest.approx(grams)  # the records that carry it, as before
    assert any(f"{len(records) - len(billed)} of the run's {len(records)} records" in m for m in summary["embodied_missing"])

    report = _report_json(tmp_path, capsys)
    embodied = report["embodied"]
    assert embodied["embodied_co2eq_g"]["mean"] == pytest.approx(grams)
    assert embodied["billed_seconds"] == pytest.approx(billed_s)
    assert embodied["seconds"] == pytest.approx(run_s)
    assert "amortised over 14.0 s of the run's 28.0 s" in report["statement"]
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    assert "covers 14.0 s of the run's 28.0 s" in capsys.readouterr().out
    assert main(["lifecycle", str(tmp_path), "--inferences", "0", "--json"]) == 0
    life = json.loads(capsys.readouterr().out)
    assert life["training_embodied_co2eq_g"] + life["run_other_embodied_co2eq_g"] == pytest.approx(grams)
    assert "the embodied figures cover 14.0 s of the run's 28.0 s; the rest had no figure" in life["notes"]


def test_an_attempt_with_embodied_off_leaves_its_time_unbilled_and_said(tmp_path, capsys):
    _run(tmp_path, [H100, H100], embodied=(None, False))
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert "turned off (embodied=False)" in summary["embodied_missing"]
    assert any("of the run's" in m for m in summary["embodied_missing"])
    assert "amortised over 14.0 s of the run's 28.0 s" in _report_json(tmp_path, capsys)["statement"]


def test_a_run_billed_throughout_is_stated_as_before(tmp_path, capsys):
    _run(tmp_path, [H100, H100])
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["embodied_missing"] == []
    report = _report_json(tmp_path, capsys)
    assert "amortised over the run adds" in report["statement"]
    assert "of the run's" not in report["statement"]
    capsys.readouterr()
    assert main(["lifecycle", str(tmp_path), "--inferences", "0", "--json"]) == 0
    assert not any("embodied" in note for note in json.loads(capsys.readouterr().out)["notes"])
