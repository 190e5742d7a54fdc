"""The summary's per-phase ``tokens`` where a record of the phase counted its tokens in part
(``tokens_counted: false``: a ``token_counter`` that failed on some batch or rank): the phase says so,
as its records do, so that nothing reading the summary (or ``Tracker.totals``) takes the count for
the phase's whole. Written only where false, as in records."""

from __future__ import annotations

import json

from greencallbacks.ledger import Ledger, PhaseTotals
from tests.test_report_tokens import SAMPLES, new_tracker, summary_of


def run(directory, epochs):
    """Training epochs, each ``(tokens, counted whole)``, with a validation inside that counts none."""
    tracker, clock = new_tracker(directory)
    for epoch, (tokens, whole) in enumerate(epochs):
        clock.advance(1.0)
        tracker.begin("train", epoch)
        tracker.begin("validation", epoch)
        tracker.add_samples(20)
        clock.advance(2.0)
        tracker.end("validation")
        tracker.add_samples(SAMPLES, tokens=tokens)
        if not whole:
            tracker.add_samples(0, tokens=None)  # a batch its counter failed on
        clock.advance(5.0)
        tracker.end("train")
    clock.advance(1.0)
    tracker.finish()
    return tracker


def test_a_phase_with_a_record_counted_in_part_says_so_in_the_summary(tmp_path):
    tracker = run(tmp_path / "part", [(1000, True), (750, False)])
    phases = summary_of(tmp_path / "part")["phases"]
    # The sum of its records' tokens still, but not a whole count: before, 1750 read as the epochs' tokens.
    assert (phases["train"]["tokens"], phases["train"]["tokens_counted"]) == (1750, False)
    assert "tokens_counted" not in phases["validation"] and "tokens_counted" not in phases["other"]
    assert tracker.totals["train"].tokens_counted is False and tracker.totals["validation"].tokens_counted is True

    run(tmp_path / "whole", [(1000, True), (1500, True)])
    phases = summary_of(tmp_path / "whole")["phases"]
    assert phases["train"]["tokens"] == 2500 and "tokens_counted" not in phases["train"]  # as the summary always was


def test_a_checkpoint_s_totals_keep_the_flag_and_an_older_state_loads_as_counted(tmp_path):
    tracker = run(tmp_path, [(1000, True), (750, False)])
    state = json.loads(json.dumps(tracker.ledger.state_dict()))  # as a checkpoint holds it
    assert state["totals"]["train"]["tokens_counted"] is False and "tokens_counted" not in state["totals"]["validation"]
    resumed = Ledger("other")
    resumed.resume(state, records=[])  # no records file: the saved totals
    assert (resumed.totals["train"].tokens, resumed.totals["train"].tokens_counted) == (1750, False)
    del state["totals"]["train"]["tokens_counted"]  # a state written before the field
    older = Ledger("other")
    older.resume(state, records=[])
    assert older.totals["train"].tokens_counted is True


def test_totals_added_together_are_counted_whole_only_where_both_were():
    whole, part = PhaseTotals(tokens=100), PhaseTotals(tokens=50, tokens_counted=False)
    total = PhaseTotals()
    total.add_totals(whole)
    assert total.tokens_counted is True
    total.add_totals(part)
    assert (total.tokens, total.tokens_counted) == (150, False)
