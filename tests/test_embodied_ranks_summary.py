"""The summary of a distributed run says what every rank billed and left out: it said rank 0's
alone, so another rank's GPU without a published footprint read as nothing missing."""

from __future__ import annotations

import json

import pytest

from greencallbacks.embodied import amortised_g, footprints
from greencallbacks.textformat import rank_ranges
from tests.fakes.scripted import FakeClock
from tests.test_embodied_tracker import Described, run_two_ranks
from tests.test_tracker import run_epochs

H100 = "NVIDIA H100 80GB HBM3"


def test_another_ranks_gpu_without_a_footprint_is_said_missing(tmp_path):
    results, summary = run_two_ranks(tmp_path, [H100, "NVIDIA H200"], {"host": "server", "host_share": 0.25})
    train = results[0].last["train"]
    # Billed: rank 0's H100 and the host; rank 1's H200 has no published figure.
    assert train.embodied_co2eq_g == pytest.approx(amortised_g(164 + 0.25 * 2500, train.duration_s))
    assert summary["embodied_missing"] == [
        "rank 1: gpu1: 'NVIDIA H200' (H200 SXM): no published manufacturing footprint in "
        "greencallbacks/data/embodied.csv; left out rather than guessed"]


def test_every_ranks_devices_are_listed_and_the_host_once(tmp_path):
    _, summary = run_two_ranks(tmp_path, [H100, H100], {"host": "server"})
    sources = {s["key"]: s for s in summary["embodied_sources"]}
    assert sources["H100 SXM"]["billed"] == [f"gpu0 ({H100})", f"rank 1: gpu1 ({H100})"]
    assert sources["server"]["billed"] == ["host x 1 (cpu)"]
    assert [s["key"] for s in summary["embodied_sources"]] == ["H100 SXM", "server", "lifetime_years", "utilisation"]
    # Rank 1 bills no host (rank 0 does): not a part left out.
    assert summary["embodied_missing"] == []
    assert summary["embodied_co2eq_g"] == pytest.approx(
        sum(r["embodied_co2eq_g"] for r in map(json.loads, (tmp_path / "energy-records.jsonl").read_text().splitlines())))
    assert footprints()["H100 SXM"].kgco2eq == 164


def test_rank_ranges_are_short():
    assert rank_ranges([5, 1, 2, 3, 7, 8]) == "1-3, 5, 7-8"


def test_the_report_statement_names_a_gpu_the_embodied_figure_leaves_out(tmp_path):
    """Rank 1's H200 has no published footprint: the records carry rank 0's figure, and the
    statement said the footprint "amortised over the run" with no word of the GPU it left out."""
    from greencallbacks.records import read_records
    from greencallbacks.report.data import statement

    _, summary = run_two_ranks(tmp_path, [H100, "NVIDIA H200"], None)
    text = statement(read_records(tmp_path), run_summaries={"ddp": summary})
    assert "manufacturing footprint amortised over the run adds" in text
    assert text.endswith(" It leaves out gpu1 ('NVIDIA H200', rank 1), for which no published manufacturing footprint is known.")


def test_a_single_process_gpu_left_out_is_named_too(tmp_path):
    from greencallbacks.records import read_records
    from greencallbacks.report.data import statement
    from tests.test_embodied_tracker import start

    clock = FakeClock()
    tracker = start(tmp_path, [Described("gpu0", clock, model=H100), Described("gpu1", clock)], clock)
    run_epochs(tracker, clock, epochs=1)
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    text = statement(read_records(tmp_path), run_summaries={tracker.run_id: summary})
    assert "It leaves out gpu1, for which no published manufacturing footprint is known." in text
    # Without the summary, nothing is said (the records cannot tell).
    assert "leaves out" not in statement(read_records(tmp_path))
