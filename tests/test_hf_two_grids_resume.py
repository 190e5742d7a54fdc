"""Two HF ``EnergyCallback``s (two grids, each with its own records directory) through a crash and
a resume whose callbacks' settings changed since the checkpoint: one changed, the match is plain
(each unchanged callback takes its own entry, the changed one the only run left over) and the run
goes on, as in the Lightning adapter; two changed, nothing tells which is which: each a new run.

Real Trainers on the tiny BERT of ``hf_tiny``, a scripted constant-power sensor; the ledger's
invariants (``flow_invariants``) for both runs.
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("transformers")

from flow_invariants import check_run, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.meter import EnergyWarning  # noqa: E402
from tests.hf_tiny import POWER_W, TRAIN_SAMPLES, scripted_sensor  # noqa: E402
from tests.test_hf_trainer_flows import make_trainer, trained  # noqa: E402

pytestmark = pytest.mark.slow

SETTINGS = dict(num_train_epochs=3, save_strategy="steps", save_steps=5, eval_strategy="no")


def grid(directory, intensity: float, pue: float | None = None) -> EnergyCallback:
    return EnergyCallback(intensity=intensity, pue=pue, output_dir=directory, sensors=[scripted_sensor()])


def crash_then_resume(tmp_path, changed: dict, restore_callback_states: bool):
    """A crash in micro-batch 6 (after checkpoint-5, inside epoch 1); the resume passes the callbacks
    again, those named in ``changed`` (``"low"``, ``"high"``) with the settings given there."""
    out, low_dir, high_dir = tmp_path / "out", tmp_path / "low", tmp_path / "high"
    settings = dict(SETTINGS, restore_callback_states_from_checkpoint=restore_callback_states)
    crashed = grid(low_dir, 50.0), grid(high_dir, 500.0)
    first = make_trainer(out, crashed[0], [crashed[1]], raise_at=6, **settings)
    with pytest.raises(RuntimeError, match="micro-batch 6"):
        first.train()
    resumed_callbacks = (grid(low_dir, **changed.get("low", dict(intensity=50.0))),
                         grid(high_dir, **changed.get("high", dict(intensity=500.0))))
    resumed = make_trainer(out, resumed_callbacks[0], [resumed_callbacks[1]], **settings)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        resumed.train(resume_from_checkpoint=True)
    assert not meter_threads()
    said = [str(w.message) for w in said if issubclass(w.category, EnergyWarning)]
    return first, resumed, crashed, resumed_callbacks, (low_dir, high_dir), said


@pytest.mark.parametrize("restore_callback_states", [False, True])
@pytest.mark.parametrize("changed", [dict(high=dict(intensity=100.0)), dict(low=dict(intensity=50.0, pue=1.5))],
                         ids=["high-grid-corrected", "low-pue-added"])
def test_one_changed_callback_of_two_continues_its_run(tmp_path, changed, restore_callback_states):
    """Before, the changed callback found no entry with its settings and measured the resume as a
    new run (its 22 + 30 samples apart from the 8 + 30 of its run, which stayed open at attempt 0),
    while the Lightning adapter continued it."""
    first, resumed, crashed, callbacks, dirs, said = crash_then_resume(tmp_path, changed, restore_callback_states)
    (name,) = changed
    which = ("low", "high").index(name)
    assert [cb for cb in resumed.callback_handler.callbacks if isinstance(cb, EnergyCallback)] == list(callbacks)
    for before, after, directory in zip(crashed, callbacks, dirs):
        assert after.tracker.run_id == before.tracker.run_id
        assert not after.session.running
        records = check_run(after.tracker.run_id, [directory], power_w=POWER_W, context=str(directory))
        assert {r.run_id for r in records} == {after.tracker.run_id}  # one run per directory
        assert trained(records, 0) == sorted(first.trained.items()) == [(0, TRAIN_SAMPLES), (1, 8)]
        assert trained(records, 1) == sorted(resumed.trained.items()) == [(1, 22), (2, TRAIN_SAMPLES)]
        assert [(r.attempt, r.epoch) for r in records if r.partial] == [(0, 1)]
    # The changed callback's records carry its new settings from the resume on.
    records = check_run(callbacks[which].tracker.run_id, [dirs[which]])
    old, new = ((50.0, 500.0)[which], 1.0), (changed[name]["intensity"], changed[name].get("pue") or 1.0)
    assert {(r.attempt, round(r.intensity_gco2eq_per_kwh, 6), r.pue) for r in records} == {(0, *old), (1, *new)}
    continued = [s for s in said if "other settings than this callback's" in s]
    assert len(continued) == 1 and "this training continues its run" in continued[0], said
    assert not [s for s in said if "new run" in s], said


def test_two_changed_callbacks_are_new_runs(tmp_path):
    """Both grids corrected: the checkpoint's two runs match neither callback by its settings, and
    nothing tells which goes with which; each callback measures a new run and says so."""
    changed = dict(low=dict(intensity=60.0), high=dict(intensity=600.0))
    first, resumed, crashed, callbacks, dirs, said = crash_then_resume(tmp_path, changed, False)
    for before, after, directory in zip(crashed, callbacks, dirs):
        assert after.tracker.run_id != before.tracker.run_id
        records = check_run(after.tracker.run_id, [directory], power_w=POWER_W, context=str(directory))
        assert {r.attempt for r in records} == {0}
    assert len([s for s in said if "this training is measured as a new run" in s]) == 2, said
    assert not [s for s in said if "continues its run" in s], said


def test_each_callback_changed_at_its_own_resume_continues_its_run_both_times(tmp_path):
    """The high grid corrected at the first resume, which crashes too; the low callback's PUE at the
    second. The checkpoint's list holds every checkpoint's entries: at the second resume the high
    grid's old entry (checkpoint-5) is of the run its callback claims, no second run left over."""
    out, low_dir, high_dir = tmp_path / "out", tmp_path / "low", tmp_path / "high"
    attempts = [(dict(intensity=50.0), dict(intensity=500.0), 6), (dict(intensity=50.0), dict(intensity=100.0), 6),
                (dict(intensity=50.0, pue=1.5), dict(intensity=100.0), None)]
    trainers, runs = [], []
    for index, (low, high, raise_at) in enumerate(attempts):
        callbacks = grid(low_dir, **low), grid(high_dir, **high)
        trainer = make_trainer(out, callbacks[0], [callbacks[1]], raise_at=raise_at, **SETTINGS)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                trainer.train(resume_from_checkpoint=index > 0)
            except RuntimeError as error:
                assert raise_at is not None and "micro-batch" in str(error)
        said = [str(w.message) for w in said if issubclass(w.category, EnergyWarning)]
        assert len([s for s in said if "this training continues its run" in s]) == (index > 0), said
        assert not [s for s in said if "new run" in s], said
        trainers.append(trainer)
        runs.append(tuple(cb.tracker.run_id for cb in callbacks))
    assert not meter_threads()
    assert runs[0] == runs[1] == runs[2]
    for run_id, directory in zip(runs[0], (low_dir, high_dir)):
        records = check_run(run_id, [directory], power_w=POWER_W, context=str(directory))
        for attempt, trainer in enumerate(trainers):
            assert trained(records, attempt) == sorted(trainer.trained.items()), attempt
    # Each crash came in the step after a checkpoint: every sample trained once, in one attempt or another.
    assert sum(sum(t.trained.values()) for t in trainers) == 3 * TRAIN_SAMPLES
