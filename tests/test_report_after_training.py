"""The report's calls after the training: records that say so (``later_call``) are taken at
their word; records written before they could say so keep the rule by their gaps."""

from __future__ import annotations

import pytest

from greencallbacks.report.data import epoch_rows, inference_after_training
from tests.test_ledger_everyday import Sequence

J = 1 / 3.6e6


def _trained(later_gap: bool, said: bool) -> Sequence:
    """Two HF epochs (training, a gap, the evaluation at the epoch, a gap), then an evaluate() at
    the last epoch in the same process, with or without its leading gap of no epoch (one of no
    duration is never written)."""
    run = Sequence()
    for epoch in range(2):
        run.epoch(0, epoch, 1000.0)
    later = [("validation", 1, 600.0), ("other", 1, 30.0)]
    for phase, epoch, joules in ([("other", None, 40.0)] if later_gap else []) + later:
        run.add(0, phase, epoch, joules, **({"later_call": True} if said else {}))
    return run


def _last_epoch_validation_j(run: Sequence) -> float:
    row = next(row for row in epoch_rows(run.records) if row["epoch"] == 1)
    return row["val_energy_kwh"] / J


def test_a_call_after_the_training_that_says_so_is_no_part_of_its_epoch_whatever_its_gaps():
    """Regression: the report found such a call by its leading gap of no epoch; where that gap is
    not in the records (of no duration, never written) the evaluate() was read as the last epoch's
    own validation, 800 J where it ran 200 J."""
    for later_gap in (True, False):
        run = _trained(later_gap, said=True)
        assert inference_after_training(run.records) == {("r", 0, r.seq) for r in run.records if r.later_call}
        assert _last_epoch_validation_j(run) == pytest.approx(200.0, rel=1e-12), later_gap


def test_records_written_before_they_could_say_so_keep_the_rule_by_their_gaps():
    run = _trained(later_gap=True, said=False)
    assert inference_after_training(run.records) == {("r", 0, r.seq) for r in run.records[-3:]}
    assert _last_epoch_validation_j(run) == pytest.approx(200.0, rel=1e-12)
