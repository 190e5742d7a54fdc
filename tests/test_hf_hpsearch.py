"""``Trainer.hyperparameter_search`` with the HF adapter: the energy values stay out of HF's default objective.

No search backend is installed here, so each test sets the Trainer up as ``hyperparameter_search``
does before a trial (``hp_search_backend``, ``compute_objective``), trains, then scores the
evaluation's metrics on HF's own paths: ``_report_to_hp_search`` (its report after every
evaluation in a trial) and ``trainer.compute_objective(trainer.evaluate())`` (the backends' call
after a trial that never evaluated).
"""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")

from transformers import Trainer  # noqa: E402
from transformers.trainer_utils import HPSearchBackend, default_compute_objective  # noqa: E402

from greencallbacks.hf import EnergyCallback  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args,
)

pytestmark = pytest.mark.slow


def trial_trainer(tmp_path, with_callback: bool, compute_objective=default_compute_objective) -> Trainer:
    trainer = Trainer(
        model=tiny_model(), args=training_args(tmp_path / f"out-{with_callback}"),
        train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
        callbacks=[EnergyCallback(intensity=400.0, pue=1.5, sensors=[scripted_sensor()])] if with_callback else None,
    )
    # What hyperparameter_search sets before its trials (W&B: its report computes the objective only).
    trainer.hp_search_backend = HPSearchBackend.WANDB
    trainer.compute_objective = compute_objective
    return trainer


def objectives(trainer: Trainer) -> tuple[dict, float, float]:
    """Train, evaluate; the objective HF reports after an evaluation, and the one a backend computes after a trial."""
    trainer.train()
    metrics = trainer.evaluate()
    trainer._report_to_hp_search({}, trainer.state.global_step, metrics)
    return metrics, trainer.objective, trainer.compute_objective(trainer.evaluate())


def test_the_default_objective_is_the_loss_as_without_the_callback(tmp_path):
    plain_metrics, *plain = objectives(trial_trainer(tmp_path, with_callback=False))
    trainer = trial_trainer(tmp_path, with_callback=True)
    metrics, *measured = objectives(trainer)

    assert plain == [plain_metrics["eval_loss"]] * 2  # HF's default: the loss alone (nothing else in the metrics)
    assert measured == [metrics["eval_loss"]] * 2
    assert measured == pytest.approx(plain, rel=1e-6)  # the same training: the same objective
    # The energy values stay in what evaluate() returns and logs.
    assert metrics["eval_energy_kwh"] > 0 and metrics["eval_power_w"] > 0
    assert trainer.state.log_history[-1]["eval_energy_kwh"] > 0


def test_an_objective_of_the_users_own_sees_the_energy_values(tmp_path):
    seen = []

    def loss_and_energy(metrics):
        seen.append(metrics)
        return metrics["eval_loss"] + metrics["eval_energy_kwh"]

    trainer = trial_trainer(tmp_path, with_callback=True, compute_objective=loss_and_energy)
    metrics, reported, _ = objectives(trainer)

    assert trainer.compute_objective is loss_and_energy
    assert reported == metrics["eval_loss"] + metrics["eval_energy_kwh"]
    assert all("eval_energy_kwh" in m for m in seen)
