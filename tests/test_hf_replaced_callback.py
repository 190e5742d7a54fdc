"""A callback replaced on the same Trainer before a resume that restores callback states.

With ``restore_callback_states_from_checkpoint=True`` HF removes each callback it rebuilds from the
checkpoint and adds a copy; the copy hands its place back to the user's instance. That instance is
the one in the Trainer when the resume began, not one the user took out before.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from flow_invariants import check_run, logged_total_matches, meter_threads  # noqa: E402
from greencallbacks.hf import EnergyCallback  # noqa: E402
from tests.hf_tiny import POWER_W, scripted_sensor  # noqa: E402
from tests.test_hf_everyday import CrashAt, make_trainer  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("restore_callback_states", [True, False])
def test_a_callback_swapped_for_another_before_a_resume_leaves_the_new_one_measuring(tmp_path, restore_callback_states):
    """Regression: a crash at step 5 (checkpoints every 2 steps); the user takes the callback out
    (``remove_callback``), adds one with a corrected grid (100 g/kWh instead of 300) and resumes on
    the same Trainer. With restored callback states the copy HF built handed its place to the
    callback taken out: it measured the resume at the old 300 g/kWh, the one added sat idle,
    out of the Trainer. Now the one added measures, as without restored states."""
    out = tmp_path / "out"
    old = EnergyCallback(intensity=300.0, sensors=[scripted_sensor()])
    crash = CrashAt(5)
    trainer = make_trainer(out, old, [crash], save_strategy="steps", save_steps=2,
                           restore_callback_states_from_checkpoint=restore_callback_states)
    with pytest.raises(RuntimeError, match="crash at step 5"):
        trainer.train()
    trainer.remove_callback(crash)
    run_id = old.tracker.run_id
    trainer.remove_callback(old)
    new = EnergyCallback(intensity=100.0, sensors=[scripted_sensor()])
    trainer.add_callback(new)
    trainer.train(resume_from_checkpoint=True)  # checkpoint-4

    assert not meter_threads()
    callbacks = trainer.callback_handler.callbacks
    assert new in callbacks and old not in callbacks
    assert new.tracker.run_id == run_id  # the resume continues the checkpoint's run
    records = check_run(run_id, [out], power_w=POWER_W, context="swapped callback")
    intensities = {(r.attempt, round(r.intensity_gco2eq_per_kwh, 6)) for r in records}
    assert intensities == {(0, 300.0), (1, 100.0)}
    train = [(r.attempt, r.epoch, r.samples, r.partial) for r in records if r.phase == "train"]
    # Attempt 0: epoch 0, then epoch 1 cut short after one step; attempt 1 goes on from step 4.
    assert train == [(0, 0, 30, False), (0, 1, 8, True), (1, 1, 30, False)]
    logged = [e["energy_kwh_total"] for e in trainer.state.log_history if "energy_kwh_total" in e]
    logged_total_matches(records, logged[-1], rel=1e-9, context="swapped callback")
