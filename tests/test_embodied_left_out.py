"""The summary says what the embodied figure leaves out in a structured form (``embodied_left_out``:
which part, its kind and model, why, and on which ranks) beside the words for people
(``embodied_missing``), and the report reads that form: it parsed the words, so rewording them
hid a GPU left out. Summaries written before it (words only) are still read."""

from __future__ import annotations

import json

from greencallbacks.embodied import LEFT_OUT_WHY, embodied_for
from greencallbacks.records import read_records
from greencallbacks.report.data import statement
from greencallbacks.sensors.base import Kind
from tests.fakes.scripted import FakeClock
from tests.test_embodied_coverage import _run
from tests.test_embodied_tracker import H100, Described, run_two_ranks, start
from tests.test_tracker import run_epochs

H200 = "NVIDIA H200"


def _summary(tmp_path) -> dict:
    return json.loads((tmp_path / "energy-summary.json").read_text())


def test_each_part_left_out_is_in_the_summary_beside_its_words(tmp_path):
    clock = FakeClock()
    sensors = [Described("gpu0", clock), Described("gpu1", clock, model=H200),
               Described("cpu", clock, kind=Kind.CPU, power_w=50.0)]
    tracker = start(tmp_path, sensors, clock)
    run_epochs(tracker, clock, epochs=1)
    summary = _summary(tmp_path)
    assert summary["embodied_left_out"] == [
        {"part": "gpu0", "kind": "gpu", "model": None, "why": "model unknown"},
        {"part": "gpu1", "kind": "gpu", "model": H200, "why": "no footprint"},
        {"part": "host", "kind": "host", "model": None, "why": "not asked for"},
    ]
    assert len(summary["embodied_missing"]) == 3  # the same, in words, in the same order
    assert summary["embodied_missing"][1].startswith("gpu1: 'NVIDIA H200'")


def test_another_ranks_part_left_out_names_its_ranks(tmp_path):
    _, summary = run_two_ranks(tmp_path, [H100, H200], {"host": "server", "host_share": 0.25})
    assert summary["embodied_left_out"] == [
        {"part": "gpu1", "kind": "gpu", "model": H200, "why": "no footprint", "ranks": [1]}]
    assert summary["embodied_missing"][0].startswith("rank 1: gpu1:")


def test_a_run_billed_in_part_or_turned_off_says_so_in_the_structured_form_too(tmp_path):
    _run(tmp_path, [H100, H100], embodied=(None, False))
    summary = _summary(tmp_path)
    assert summary["embodied_left_out"] == [
        {"part": "run", "kind": None, "model": None, "why": "turned off"},
        {"part": "records", "kind": None, "model": None, "why": "records unbilled", "records": 4, "of": 8},
    ]
    assert {entry["why"] for entry in summary["embodied_left_out"]} <= set(LEFT_OUT_WHY)


def test_the_report_reads_the_structured_form_not_the_words(tmp_path):
    _, summary = run_two_ranks(tmp_path, [H100, H200], None)
    records = read_records(tmp_path)
    said = " It leaves out gpu1 ('NVIDIA H200', rank 1), for which no published manufacturing footprint is known."
    assert statement(records, run_summaries={"ddp": summary}).endswith(said)
    # The words are for people: reworded (another release, a translation), the GPU is still named.
    reworded = {**summary, "embodied_missing": ["Rang 1, GPU 1 (NVIDIA H200): kein veröffentlichter Fußabdruck"]}
    assert statement(records, run_summaries={"ddp": reworded}).endswith(said)
    # A summary written before the structured form: read from its words, as before.
    old = {key: value for key, value in summary.items() if key != "embodied_left_out"}
    assert statement(records, run_summaries={"ddp": old}).endswith(said)
    # Nothing left out in the structured form: nothing said, whatever the words.
    assert "leaves out" not in statement(records, run_summaries={"ddp": {**summary, "embodied_left_out": []}})


def test_embodied_for_gives_its_missing_lines_structured_on_request():
    left_out: list[dict] = []
    found = embodied_for([{"name": "gpu0", "kind": "gpu", "model": H100}, {"name": "fan", "kind": "other"},
                          {"name": "gpu1", "kind": "gpu", "model": "NVIDIA H20"}], 3600, ram_gb=64, left_out=left_out)
    grams, _, _, missing = found  # still four fields to unpack
    assert grams > 0 and len(missing) == len(left_out) == 3
    assert [(e["part"], e["why"]) for e in left_out] == [("fan", "no footprint"), ("gpu1", "no footprint"),
                                                          ("ram_gb", "billed elsewhere")]
