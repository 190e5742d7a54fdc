"""Tokens in the run summary and in ``report``: where records count tokens (HF's
``num_input_tokens_seen``, a ``token_counter``), the summary's per-phase totals carry them and the
report shows tokens and J per token, every figure recomputed here from the raw records.

Tracker-level runs on a fake clock and a scripted constant-power sensor.
"""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from greencallbacks import report
from greencallbacks.carbon import Carbon
from greencallbacks.ledger import Ledger
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.textformat import count_text, joule_text
from greencallbacks.tracker import Tracker
from greencallbacks.units import J_PER_KWH
from tests.fakes.scripted import FakeClock, ScriptedSensor

INTENSITY, PUE = 400.0, 1.5
SAMPLES = 100


def new_tracker(directory, run_id=None, power_w=100.0):
    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=power_w)], fallback=None, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    tracker = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=directory, run_id=run_id)
    tracker.start(meter)
    return tracker, clock


def train_epoch(tracker, clock, epoch, tokens, validate=True):
    """An epoch of ``SAMPLES`` with ``tokens`` (None: not counted) and a validation inside it that counts none."""
    clock.advance(1.0)
    tracker.begin("train", epoch)
    clock.advance(5.0)
    if validate:
        tracker.begin("validation", epoch)
        tracker.add_samples(20)
        clock.advance(2.0)
        tracker.end("validation")
    clock.advance(5.0)
    tracker.add_samples(SAMPLES, **({} if tokens is None else {"tokens": tokens}))
    tracker.end("train")


def run(directory, tokens_per_epoch, run_id=None, power_w=100.0):
    tracker, clock = new_tracker(directory, run_id, power_w)
    for epoch, tokens in enumerate(tokens_per_epoch):
        train_epoch(tracker, clock, epoch, tokens)
    clock.advance(1.0)
    tracker.finish()
    return tracker


def summary_of(directory):
    return json.loads((directory / "energy-summary.json").read_text())


def test_the_summary_s_phases_carry_the_tokens_their_records_counted(tmp_path):
    run(tmp_path, [1000, 1500])
    records, summary = read_records(tmp_path), summary_of(tmp_path)
    train = [r for r in records if r.phase == "train"]
    assert [r.tokens for r in train] == [1000, 1500]
    assert summary["phases"]["train"]["tokens"] == sum(r.tokens for r in train) == 2500
    # A phase whose records counted none has no count, not a count of 0.
    assert summary["phases"]["validation"]["tokens"] is None and summary["phases"]["other"]["tokens"] is None


def test_the_ledger_state_keeps_the_tokens_and_an_older_state_without_them_still_loads(tmp_path):
    tracker = run(tmp_path, [1000, 1500])
    state = json.loads(json.dumps(tracker.ledger.state_dict()))  # as a checkpoint holds it
    resumed = Ledger("other")
    resumed.resume(state, records=[])  # no records file: the saved totals
    assert resumed.totals["train"].tokens == 2500 and resumed.totals["validation"].tokens is None
    for values in state["totals"].values():  # a state written before totals counted tokens
        del values["tokens"]
    older = Ledger("other")
    older.resume(state, records=[])
    assert older.totals["train"].tokens is None
    assert older.totals["train"].energy_j == pytest.approx(tracker.totals["train"].energy_j)


def test_a_prefix_s_total_adds_the_tokens_of_the_phases_that_counted_them(tmp_path):
    tracker, clock = new_tracker(tmp_path)
    for phase, tokens in (("validation", 40), ("predict", None), ("validation", 60)):
        tracker.begin(phase, metric_prefix="test")
        clock.advance(1.0)
        tracker.add_samples(10, **({} if tokens is None else {"tokens": tokens}))
        tracker.end(phase)
    assert tracker.ledger.prefix_total("test").tokens == 100
    assert tracker.ledger.prefix_total("test").count == 3
    tracker.finish()


def test_a_resume_counts_each_record_s_tokens_once(tmp_path):
    """From the records, and from the checkpoint's totals where the records file is gone (its open
    phase carried from the checkpoint, taken out of the saved totals and counted again once)."""
    first, clock = new_tracker(tmp_path)
    train_epoch(first, clock, 0, 1000)
    clock.advance(1.0)
    first.begin("train", 1)
    clock.advance(5.0)
    first.add_samples(40, tokens=300)
    checkpoint = first.state_dict()  # inside epoch 1, its 300 tokens so far open
    first.abort()
    (tmp_path / "energy-records.jsonl").unlink()
    second, clock = new_tracker(tmp_path)
    second.load_state_dict(checkpoint)
    assert second.totals["train"].tokens == 1300
    train_epoch(second, clock, 1, 1000)
    second.finish()
    records = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert [(r.attempt, r.tokens, r.carried) for r in records] == [(0, 300, True), (1, 1000, False)]
    assert summary_of(tmp_path)["phases"]["train"]["tokens"] == 1000 + 300 + 1000  # epoch 0's record is gone

    third, clock = new_tracker(tmp_path)  # from the records file now: the checkpoint's epoch 0 is in none
    third.load_state_dict(second.state_dict())
    train_epoch(third, clock, 2, 500)
    third.finish()
    records = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert summary_of(tmp_path)["phases"]["train"]["tokens"] == sum(r.tokens for r in records) == 1800


def _per_token(records):
    return sum(r.energy_kwh for r in records) * J_PER_KWH / sum(r.tokens for r in records)


def test_one_run_s_report_shows_tokens_and_j_per_token_from_the_records(tmp_path):
    run(tmp_path, [1000, 1500])
    records = read_records(tmp_path)
    train = [r for r in records if r.phase == "train"]
    data = report.summary(records)
    assert [row["j_per_token"]["mean"] for row in data["epochs"]] == pytest.approx([_per_token([r]) for r in train])
    assert [row["train_tokens"]["mean"] for row in data["epochs"]] == [1000, 1500]
    assert data["phases"]["train"]["tokens"]["mean"] == 2500
    assert data["phases"]["train"]["j_per_token"]["mean"] == pytest.approx(_per_token(train))
    assert data["phases"]["validation"]["tokens"] is None and data["phases"]["validation"]["j_per_token"] is None
    assert data["run_totals"][train[0].run_id]["train_tokens"] == 2500

    per_token = _per_token(train)
    assert f"(2 epochs of {SAMPLES} samples, {count_text(2500)} tokens in all)" in data["statement"]
    assert f"), {joule_text(per_token)} per token, and emitted" in data["statement"]
    assert count_text(2500) == "2.50 k" and joule_text(per_token) == "1.20 J"  # 2 x 100 W x 10 s x 1.5 / 2500

    md = report.render(records, "md")
    epoch_header = next(line for line in md.splitlines() if line.startswith("| epoch"))
    assert "| per sample (J) | per token (J) | validation" in epoch_header
    # Each epoch's J/token: 1.5 kJ over 1000 tokens, then over 1500.
    assert [line.split(" | ")[5] for line in md.splitlines() if line.startswith(("| 0 |", "| 1 |"))] == ["1.50", "1.00"]
    phase_header = next(line for line in md.splitlines() if line.startswith("| phase"))
    assert phase_header.endswith("| samples | tokens | per token (J) |")
    train_line = next(line for line in md.splitlines() if line.startswith("| train |"))
    assert train_line.endswith("| 200 | 2500 | 1.20 |")
    assert next(line for line in md.splitlines() if line.startswith("| validation |")).endswith("| n/a | n/a |")

    latex = report.render(records, "latex")
    assert r"\begin{tabular}{lrrrrr}" in latex and "& Per sample (J) & Per token (J) \\\\" in latex
    assert "\nTraining & 20.0 & " in latex and latex.split("\nTraining & ")[1].splitlines()[0].endswith("& & 1.20 \\\\")

    rows = list(csv.DictReader(io.StringIO(report.render(records, "csv"))))
    assert list(rows[0])[-2:] == ["train_tokens", "j_per_token"]
    assert [(int(row["train_tokens"]), float(row["j_per_token"])) for row in rows] == [
        (r.tokens, pytest.approx(_per_token([r]), rel=1e-9)) for r in train]
    assert json.loads(report.render(records, "json"))["configurations"][0]["phases"]["train"]["tokens"]["mean"] == 2500


def test_repeats_pool_tokens_and_j_per_token_as_mean_and_standard_error(tmp_path):
    """Each run's own J/token, then mean ± SE over the runs, as per-sample costs are pooled."""
    for run_id, tokens, power_w in (("a", [1000, 1000], 100.0), ("b", [1200, 1200], 110.0), ("c", [900, 900], 95.0)):
        run(tmp_path / run_id, tokens, run_id=run_id, power_w=power_w)
    records = [r for run_id in "abc" for r in read_records(tmp_path / run_id)]
    (config, group), = report.group_runs(records)  # tokens are no part of a configuration
    data = report.summary(records)
    by_run = {run_id: [r for r in records if r.run_id == run_id and r.phase == "train"] for run_id in "abc"}
    ratios = [_per_token(train) for train in by_run.values()]
    mean, se = report.mean_and_se(ratios)
    assert data["phases"]["train"]["j_per_token"]["mean"] == pytest.approx(mean)
    assert data["phases"]["train"]["j_per_token"]["se"] == pytest.approx(se)
    counts = [sum(r.tokens for r in train) for train in by_run.values()]
    assert data["phases"]["train"]["tokens"]["mean"] == pytest.approx(sum(counts) / 3)
    assert data["phases"]["train"]["tokens"]["se"] == pytest.approx(report.mean_and_se(counts)[1])
    epoch_0 = [_per_token([train[0]]) for train in by_run.values()]
    assert data["epochs"][0]["j_per_token"]["mean"] == pytest.approx(report.mean_and_se(epoch_0)[0])
    assert data["epochs"][0]["j_per_token"]["se"] == pytest.approx(report.mean_and_se(epoch_0)[1])

    token_mean, token_se = report.mean_and_se(counts)
    assert f", {count_text(token_mean, token_se)} tokens in all per run)" in data["statement"]
    assert f", {joule_text(mean, se)} per token, and emitted" in data["statement"]
    md = report.render(records, "md")
    assert "| per token (J, mean ± SE) |" in md and "| tokens (mean) | per token (J, mean ± SE) |" in md


def test_a_record_that_counted_no_tokens_beside_others_leaves_the_count_n_a_and_says_so(tmp_path):
    """An epoch whose batches were not all counted divides nothing: its J/token, and the phase's,
    are n/a (a partial count would make a cost per token too high), as samples_counted: false does."""
    run(tmp_path, [1000, None])
    records = read_records(tmp_path)
    data = report.summary(records)
    assert [row["j_per_token"] is None for row in data["epochs"]] == [False, True]
    assert data["phases"]["train"]["tokens"] is None and data["phases"]["train"]["j_per_token"] is None
    assert "tokens in all" not in data["statement"] and "per token" not in data["statement"]
    assert any("counted no tokens beside others of their phase" in note for note in data["provenance"])
    md = report.render(records, "md")
    assert next(line for line in md.splitlines() if line.startswith("| train |")).endswith("| n/a | n/a |")
    assert [row["train_tokens"] for row in csv.DictReader(io.StringIO(report.render(records, "csv")))] == ["1000", ""]


def test_a_report_without_tokens_shows_no_token_column_nor_sentence(tmp_path):
    run(tmp_path, [None, None])
    records = read_records(tmp_path)
    md, latex = report.render(records, "md"), report.render(records, "latex")
    assert "token" not in md and "token" not in latex.lower()
    assert r"\begin{tabular}{lrrrr}" in latex
    data = report.summary(records)
    assert data["phases"]["train"]["tokens"] is None and all(row["j_per_token"] is None for row in data["epochs"])
    assert not any("tokens" in note for note in data["provenance"])
    assert all(math.isnan(float(row["j_per_token"] or "nan")) for row in csv.DictReader(io.StringIO(
        report.render(records, "csv"))))


def test_a_small_token_count_reads_as_a_whole_number(tmp_path):
    """Below a thousand tokens the count is in no unit: a run of 42 tokens read "42.0 tokens in all"
    in the sentence (the phase table said 42), as if a token could be split."""
    run(tmp_path, [40, 2])
    data = report.summary(read_records(tmp_path))
    assert "(2 epochs of 100 samples, 42 tokens in all)" in data["statement"]
    assert (count_text(5), count_text(512), count_text(2500)) == ("5", "512", "2.50 k")
