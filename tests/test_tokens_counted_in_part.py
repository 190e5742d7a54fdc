"""A phase whose tokens were counted for some of its batches only: a ``token_counter`` that failed
on one batch (raised, or returned no count), or on one rank. Its record says ``tokens_counted:
false``, it logs no ``energy_j_per_token`` (the other batches' tokens alone over the whole energy
gave too high a cost per token), and the report shows its tokens and J/token n/a with the note,
as for an uncounted sample count. Records without the field read as counted.

Tracker-level runs on a fake clock and a scripted constant-power sensor; the frameworks' own runs
are in ``test_lightning_tokens_in_part.py`` and ``test_hf_tokens_in_part.py``.
"""

from __future__ import annotations

import csv
import io
import json
import warnings

import pytest

from greencallbacks import report
from greencallbacks.records import RECORDS_FILE, Record, RecordWriter, combine_ranks, read_records
from greencallbacks.samples import BatchCounter
from tests.test_records import make_record
from tests.test_report_tokens import SAMPLES, new_tracker

BATCHES, TOKENS_PER_BATCH = 4, 250


def test_a_record_counted_in_part_says_so_and_an_older_record_reads_as_counted(tmp_path):
    writer = RecordWriter(tmp_path / RECORDS_FILE)
    written = [make_record(0, tokens=1000), make_record(1, tokens=750, tokens_counted=False)]
    assert writer.write(*written)
    lines = [json.loads(line) for line in (tmp_path / RECORDS_FILE).read_text().splitlines()]
    # Written only where false: a record counted whole is the line it always was.
    assert "tokens_counted" not in lines[0] and lines[1]["tokens_counted"] is False
    assert read_records(tmp_path) == written
    assert [r.tokens_counted for r in read_records(tmp_path)] == [True, False]

    older = {key: value for key, value in lines[1].items() if key != "tokens_counted"}  # written before the field
    assert Record.from_dict(older).tokens_counted is True
    with pytest.raises(TypeError, match="tokens_counted"):
        Record.from_dict({**lines[1], "tokens_counted": "no"})


def test_the_ranks_sum_is_counted_in_part_where_one_rank_s_count_failed():
    rank_0, failed_rank_1 = make_record(0, tokens=600), make_record(0, tokens=200, tokens_counted=False)
    (combined,) = combine_ranks([[rank_0], [failed_rank_1]])
    assert combined.tokens == 800 and combined.tokens_counted is False
    # HF's own count is rank 0's alone (already summed over ranks): another rank without tokens is no failure.
    (combined,) = combine_ranks([[rank_0], [make_record(0, tokens=None)]])
    assert combined.tokens == 600 and combined.tokens_counted is True


def counted_epoch(tracker, clock, counter, epoch, failing_batch=None):
    """An epoch of ``BATCHES`` batches, each counted by ``counter``; the one ``failing_batch`` makes it raise."""
    clock.advance(1.0)
    tracker.begin("train", epoch)
    for batch in range(BATCHES):
        clock.advance(2.5)
        counter.add(tracker, {"n": SAMPLES // BATCHES, "fail": batch == failing_batch})
    return tracker.end("train")


def tokens_of(batch):
    if batch["fail"]:
        raise KeyError("attention_mask")
    return TOKENS_PER_BATCH


def test_a_token_counter_failing_on_one_batch_leaves_that_epoch_without_a_cost_per_token(tmp_path):
    """Before, epoch 1's record held the other three batches' 750 tokens, marked as any count, and
    logged 2.0 J/token where its 1.5 kJ went into 1000 tokens (1.5 J/token): a third too high."""
    tracker, clock = new_tracker(tmp_path)
    counter = BatchCounter(sample_counter=lambda b: b["n"], token_counter=tokens_of)
    logged = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch, failing in enumerate((None, 2, None)):
            counted_epoch(tracker, clock, counter, epoch, failing)
            logged.append(tracker.metrics("train"))
    clock.advance(1.0)
    tracker.finish()

    assert ["energy_j_per_token" in values for values in logged] == [True, False, True]
    train = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert [(r.samples, r.samples_counted, r.tokens, r.tokens_counted) for r in train] == [
        (SAMPLES, True, 1000, True), (SAMPLES, True, 750, False), (SAMPLES, True, 1000, True)]
    for values, record in zip(logged, train):
        if "energy_j_per_token" in values:  # the other epochs exact: each record's energy over its tokens
            assert values["energy_j_per_token"] == pytest.approx(record.energy_j / record.tokens, rel=1e-12)
    assert train[0].energy_j / 1000 == pytest.approx(1.5)  # 100 W x 10 s x PUE 1.5 over 1000 tokens
    # The per-sample values stay: the samples were counted.
    assert all(values["energy_j_per_sample"] > 0 for values in logged)
    said = [str(w.message) for w in caught if "token_counter" in str(w.message)]  # once, saying what it does
    assert len(said) == 1 and "tokens_counted: false" in said[0], said


def test_the_report_shows_a_phase_counted_in_part_as_n_a_with_the_note(tmp_path):
    tracker, clock = new_tracker(tmp_path)
    counter = BatchCounter(sample_counter=lambda b: b["n"], token_counter=tokens_of)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch, failing in enumerate((None, 2)):
            counted_epoch(tracker, clock, counter, epoch, failing)
    clock.advance(1.0)
    tracker.finish()
    records = read_records(tmp_path)
    data = report.summary(records)
    # Epoch 0 exact (1.5 kJ over 1000 tokens); epoch 1, 750 of its tokens counted, n/a (it read 2.0 J/token).
    assert [row["train_tokens"] and row["train_tokens"]["mean"] for row in data["epochs"]] == [1000, None]
    assert [row["j_per_token"] and row["j_per_token"]["mean"] for row in data["epochs"]] == [pytest.approx(1.5), None]
    assert data["phases"]["train"]["tokens"] is None and data["phases"]["train"]["j_per_token"] is None
    assert "tokens in all" not in data["statement"] and "per token" not in data["statement"]
    assert any("tokens_counted: false" in note for note in data["provenance"]), data["provenance"]
    md = report.render(records, "md")
    assert next(line for line in md.splitlines() if line.startswith("| train |")).endswith("| n/a | n/a |")
    epoch_lines = [line for line in md.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert [line.split(" | ")[5] for line in epoch_lines] == ["1.50", "n/a"]
    rows = list(csv.DictReader(io.StringIO(report.render(records, "csv"))))
    assert [(row["train_tokens"], row["j_per_token"]) for row in rows] == [("1000", "1.5"), ("", "")]
    # The run's totals: no training tokens, as for a phase whose tokens some record lacks.
    assert data["run_totals"][records[0].run_id]["train_tokens"] is None
