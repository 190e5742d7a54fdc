"""Optuna searches around the HF and Lightning callbacks, with a trial its pruner stops.

HF's ``Trainer.hyperparameter_search(backend="optuna")`` reuses one Trainer and its callbacks for
every trial, scores each with HF's default objective (which sums every evaluation metric but the
loss) and, for a trial the pruner stops, calls ``on_train_end`` and then raises ``TrialPruned`` out
of ``train()``. ``optuna_integration.PyTorchLightningPruningCallback`` raises it from Lightning's
``on_validation_end``. Either way: each trial is a run of its own whose records add up to its
summary, the pruned one cut short (``failed``, its last record partial) and never pooled by the
report with trials that finished, and the search's objective values are the losses alone.
Skipped where optuna (or optuna-integration, for Lightning) is not installed.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.report import group_runs  # noqa: E402

pytestmark = pytest.mark.slow


class PrunesOneTrial(optuna.pruners.BasePruner):
    """Prunes trial ``number`` at its report of step ``at`` (HF: the global step; Lightning: the epoch); keeps the study."""

    def __init__(self, number: int, at: int) -> None:
        self.number, self.at, self.study = number, at, None

    def prune(self, study, trial) -> bool:
        self.study = study
        return trial.number == self.number and self.at in trial.intermediate_values


def runs_of(directory: Path) -> dict[str, list]:
    """Each run's records, in the order the runs began; checks that they add up to its summary."""
    runs: dict[str, list] = {}
    for record in read_records(directory / "energy-records.jsonl"):
        runs.setdefault(record.run_id, []).append(record)
    for run_id, records in runs.items():
        assert {r.attempt for r in records} == {0}, run_id
        assert summary_of(directory, run_id)["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    return runs


def summary_of(directory: Path, run_id: str) -> dict:
    for path in [directory / "energy-summary.json", directory / f"energy-summary-{run_id}.json"]:
        if path.exists() and (summary := json.loads(path.read_text()))["run_id"] == run_id:
            return summary
    raise AssertionError(f"no summary of run {run_id} in {directory}")


def pooled(directory: Path) -> set[tuple[str, ...]]:
    """The report's groups of runs (runs of one configuration, taken as repeats)."""
    return {tuple(sorted({r.run_id for r in group})) for _, group in group_runs(read_records(directory / "energy-records.jsonl"))}


def test_hf_optuna_search_prunes_a_trial_as_cut_short_and_scores_the_loss_alone(tmp_path):
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args

    class EvaluationsOfEachTrain(TrainerCallback):
        def __init__(self) -> None:
            self.trains: list[list[dict]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.trains.append([])

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.trains[-1].append(dict(metrics))

    evaluations = EvaluationsOfEachTrain()
    energy = EnergyCallback(intensity=400.0, pue=1.5, sensors=[scripted_sensor()])
    out = tmp_path / "out"
    trainer = Trainer(model_init=lambda trial=None: tiny_model(), args=training_args(out, num_train_epochs=3),
                      train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                      callbacks=[energy, evaluations])
    steps_per_epoch = 4  # 30 samples in batches of 8
    pruner = PrunesOneTrial(number=1, at=steps_per_epoch)  # after its first epoch's evaluation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        best = trainer.hyperparameter_search(
            direction="minimize", backend="optuna", n_trials=3, pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0),
            hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
        )
        trainer.args.learning_rate = best.hyperparameters["learning_rate"]
        trainer.train()  # the final training with the best settings
    assert [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)] == []

    trials = pruner.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    for trial, metrics in zip(trials, evaluations.trains):
        assert all(m["eval_energy_kwh"] > 0 for m in metrics)  # the energy values are in the metrics ...
        # ... and out of the objective: HF's default summed them into it (50 W of eval_power_w over a loss of 0.7).
        assert trial.intermediate_values == {(i + 1) * steps_per_epoch: m["eval_loss"] for i, m in enumerate(metrics)}
        if trial.state.name == "COMPLETE":
            assert trial.value == metrics[-1]["eval_loss"]
    assert best.objective == min(t.value for t in trials if t.value is not None)

    runs = runs_of(out)
    assert len(runs) == 4, list(runs)  # each trial, then the final training
    run_ids = list(runs)
    assert [summary_of(out, run_id)["ended"] for run_id in run_ids] == ["finished", "failed", "finished", "finished"]
    pruned = runs[run_ids[1]]
    # Pruned after its first epoch's evaluation: that epoch whole, the time after it cut short.
    assert [(r.phase, r.epoch, r.samples) for r in pruned if r.phase != "other"] == [("train", 0, 30), ("validation", 0, 10)]
    assert pruned[-1].partial and not any(r.partial for r in pruned[:-1])
    for run_id in run_ids[::2] + run_ids[3:]:
        trained = [(r.epoch, r.samples) for r in runs[run_id] if r.phase == "train"]
        assert trained == [(0, 30), (1, 30), (2, 30)] and not any(r.partial for r in runs[run_id]), run_id
    # The trial cut short is no repeat of the trainings that finished (before: a whole 1-epoch training).
    assert pooled(out) == {(run_ids[1],), tuple(sorted([run_ids[0], run_ids[2], run_ids[3]]))}


def test_lightning_optuna_pruning_callback_cuts_the_pruned_trial_short(tmp_path):
    pytest.importorskip("optuna_integration")
    pytest.importorskip("lightning")
    import lightning.pytorch as L
    import torch
    from optuna_integration import PyTorchLightningPruningCallback
    from torch.utils.data import DataLoader, TensorDataset

    from tests.fakes.scripted import ScriptedSensor
    from tests.lightning_models import flavour

    _, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    generator = torch.Generator().manual_seed(0)
    data = [TensorDataset(torch.rand(n, 4, generator=generator), torch.rand(n, 1, generator=generator)) for n in (32, 16)]
    directories = []

    def objective(trial) -> float:
        logger = L.loggers.CSVLogger(str(tmp_path), name="sweep")  # version_<n>: a directory per trial
        trainer = L.Trainer(
            max_epochs=3, callbacks=[EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0),
                                     PyTorchLightningPruningCallback(trial, monitor="val_loss")],
            logger=logger, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, num_sanity_val_steps=0,
        )
        directories.append(Path(logger.log_dir))
        trainer.fit(TinyModel(), DataLoader(data[0], batch_size=8), DataLoader(data[1], batch_size=8))
        return trainer.callback_metrics["val_loss"].item()

    pruner = PrunesOneTrial(number=1, at=1)  # at its second epoch's validation
    study = optuna.create_study(direction="minimize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(objective, n_trials=3)
    assert [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)] == []
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]

    ended, run_ids = [], []
    for directory in directories:
        (run_id, records), = runs_of(directory).items()
        run_ids.append(run_id)
        ended.append(summary_of(directory, run_id)["ended"])
        trained = [(r.epoch, r.samples, r.partial) for r in records if r.phase == "train"]
        if len(run_ids) == 2:  # pruned inside epoch 1, after its every batch (Lightning validates before the epoch ends)
            assert trained == [(0, 32, False), (1, 32, True)]
        else:
            assert trained == [(0, 32, False), (1, 32, False), (2, 32, False)]
    assert ended == ["finished", "failed", "finished"]
    all_records = read_records([d / "energy-records.jsonl" for d in directories])
    groups = {tuple(sorted({r.run_id for r in group})) for _, group in group_runs(all_records)}
    assert groups == {(run_ids[1],), tuple(sorted([run_ids[0], run_ids[2]]))}
