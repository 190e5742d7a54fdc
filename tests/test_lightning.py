"""The Lightning adapter with the real Trainer (both flavours) and real loggers, read back from disk."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from greencallbacks.tracker import METRIC_STEMS  # noqa: E402

from lightning_models import BATCH, FLAVOURS, TRAIN_SAMPLES, VAL_SAMPLES, Boom, flavour, loaders, trainer_kwargs  # noqa: E402

pytestmark = pytest.mark.slow
REL = 1e-5  # values pass through Lightning as float32 tensors


# ------------------------------------------------------------------------------ reading back
def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def csv_scalars(metrics_csv) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key != "step" and value != "":
                    out.setdefault(key, []).append((int(row["step"]), float(value)))
    return out


def mlflow_scalars(tracking_uri, run_id) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    keys = client.get_run(run_id).data.metrics.keys()
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


def wandb_scalars(wandb_dir, epochs: int) -> dict[str, list[tuple[int, float]]]:
    from wandb_offline import read_history_with, run_files

    (run_file,) = run_files(wandb_dir)
    out: dict[str, list[tuple[int, float]]] = {}
    for row in read_history_with(run_file, "val_energy_kwh", epochs):
        for key, value in row.items():
            if not key.startswith("_") and key != "trainer/global_step":
                out.setdefault(key, []).append((row.get("trainer/global_step"), value))
    return out


def cumulative(records, phases=None) -> list[float]:
    """Running sum of energy_kwh over records (in file order), taken at each record."""
    running, out = 0.0, []
    for r in records:
        if phases is None or r.phase in phases:
            running += r.energy_kwh
        out.append(running)
    return out


def assert_epoch_metrics(scalars: dict, records, epochs: int, where: str) -> None:
    """One positive value per epoch for every stem, equal to the records; totals equal their sums."""
    train = [r for r in records if r.phase == "train"]
    val = [r for r in records if r.phase == "validation"]
    assert [r.epoch for r in train] == list(range(epochs)), where
    assert [r.epoch for r in val] == list(range(epochs)), where
    for stem in METRIC_STEMS:
        for name in (stem, f"val_{stem}"):
            values = [v for _, v in scalars.get(name, [])]
            assert len(values) == epochs, f"{where}: {name} has {len(values)} values, expected {epochs}"
            assert all(v > 0 for v in values), f"{where}: {name} = {values}"
    assert [v for _, v in scalars["energy_kwh"]] == pytest.approx([r.energy_kwh for r in train], rel=REL), where
    assert [v for _, v in scalars["co2eq_g"]] == pytest.approx([r.co2eq_g for r in train], rel=REL), where
    assert [v for _, v in scalars["val_energy_kwh"]] == pytest.approx([r.energy_kwh for r in val], rel=REL), where
    j_per_sample = [r.energy_kwh * 3.6e6 / r.samples for r in train]
    assert [v for _, v in scalars["energy_j_per_sample"]] == pytest.approx(j_per_sample, rel=REL), where
    # The training total is everything measured so far (all phases and gaps) when the epoch ended.
    run_total = cumulative(records)
    expected_total = [run_total[records.index(r)] for r in train]
    assert [v for _, v in scalars["energy_kwh_total"]] == pytest.approx(expected_total, rel=REL), where
    val_total = cumulative(records, {"validation"})
    expected_val_total = [val_total[records.index(r)] for r in val]
    assert [v for _, v in scalars["val_energy_kwh_total"]] == pytest.approx(expected_val_total, rel=REL), where


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("package", list(FLAVOURS))
def test_every_logger_gets_every_epoch(package, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    L, EnergyCallback, TinyModel = flavour(package)
    loggers = L.loggers
    tensorboard = loggers.TensorBoardLogger(tmp_path / "tb", name="run")
    csv_logger = loggers.CSVLogger(tmp_path / "csv", name="run")
    mlflow_uri = f"file:{tmp_path / 'mlruns'}"
    mlflow = loggers.MLFlowLogger(experiment_name="energy", tracking_uri=mlflow_uri)
    wandb_logger = loggers.WandbLogger(project="energy", save_dir=str(tmp_path), offline=True)
    callback = EnergyCallback(country="FR")
    epochs = 3
    trainer = L.Trainer(max_epochs=epochs, logger=[tensorboard, csv_logger, mlflow, wandb_logger], callbacks=[callback], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    import wandb

    wandb.finish()

    # Default output directory: the trainer's log_dir (the first logger's).
    records = read_records(tensorboard.log_dir)
    assert {r.run_id for r in records} == {callback.tracker.run_id}
    assert all(r.samples == TRAIN_SAMPLES for r in records if r.phase == "train")
    assert all(r.samples == VAL_SAMPLES for r in records if r.phase == "validation")
    assert all(r.intensity_zone.upper().startswith("FR") for r in records)
    summary = json.loads((Path(tensorboard.log_dir) / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)

    read_back = {
        "tensorboard": tensorboard_scalars(tensorboard.log_dir),
        "csv": csv_scalars(Path(csv_logger.log_dir) / "metrics.csv"),
        "mlflow": mlflow_scalars(mlflow_uri, mlflow.run_id),
        "wandb": wandb_scalars(tmp_path / "wandb", epochs),
    }
    for where, scalars in read_back.items():
        assert_epoch_metrics(scalars, records, epochs, where)
        # Logged at the step Lightning uses for the epoch's own metrics.
        assert [s for s, _ in scalars["energy_kwh"]] == [s for s, _ in scalars["train_loss"]], where
        assert [s for s, _ in scalars["val_energy_kwh"]] == [s for s, _ in scalars["val_loss"]], where
    # Shown in the progress bar.
    assert set(trainer.progress_bar_metrics) >= {"energy_kwh_total", "co2eq_g_total"}


def test_pytorch_lightning_flavour_imports_only_its_own():
    code = (
        "import sys, greencallbacks.lightning.pl as gpl, pytorch_lightning as pl\n"
        "assert 'lightning' not in sys.modules, 'imported lightning'\n"
        "assert isinstance(gpl.EnergyCallback(), pl.Callback)\n"
        "import greencallbacks.lightning\n"
        "assert 'lightning' not in sys.modules, 'the package imported lightning'\n"
        "from greencallbacks.lightning import EnergyCallback\n"
        "import lightning.pytorch as L\n"
        "assert isinstance(EnergyCallback(), L.Callback)\n"
        "assert not isinstance(EnergyCallback(), pl.Callback)\n"
    )
    for package in ("pytorch_lightning", "lightning"):
        pytest.importorskip(package, reason=f"{package} is not installed: this test needs both flavours")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_bad_settings_fail_at_construction():
    _, EnergyCallback, _ = flavour("lightning.pytorch")
    with pytest.raises(ValueError, match="pue"):
        EnergyCallback(pue=0.5)
    with pytest.raises(ValueError, match="sample_counter"):
        EnergyCallback(sample_counter=3)
    with pytest.raises(ValueError, match="progress_bar"):
        EnergyCallback(progress_bar="yes")


def test_sanity_check_is_not_validation_and_counter_override(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(output_dir=tmp_path / "energy", sample_counter=lambda batch: 2, progress_bar=False)
    csv_logger = L.loggers.CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(max_epochs=1, num_sanity_val_steps=2, logger=csv_logger, callbacks=[callback], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    records = read_records(tmp_path / "energy")
    validation = [r for r in records if r.phase == "validation"]
    # One validation record (the epoch's), not two: the sanity check went to `other`.
    assert len(validation) == 1
    assert validation[0].samples == 2 * (VAL_SAMPLES // 8)  # the override counted 2 per batch
    assert [r.samples for r in records if r.phase == "train"] == [2 * (TRAIN_SAMPLES // 8)]
    assert records[0].phase == "other" and records[0].energy_kwh > 0  # setup + sanity check
    assert "energy_kwh_total" not in trainer.progress_bar_metrics  # progress_bar=False
    assert trainer.callback_metrics["val_energy_kwh"].item() == pytest.approx(validation[0].energy_kwh, rel=REL)


def test_resume_continues_totals_and_counts_each_epoch_once(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    energy_dir, ckpt_dir = tmp_path / "energy", tmp_path / "ckpt"

    def fit(max_epochs, ckpt_path=None):
        callback = EnergyCallback(output_dir=energy_dir)  # a new object, as in a new process
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_on_train_epoch_end=True)
        csv_logger = L.loggers.CSVLogger(tmp_path, name="run", version=f"to{max_epochs}")
        trainer = L.Trainer(
            max_epochs=max_epochs, logger=csv_logger, callbacks=[callback, checkpoint], **trainer_kwargs(enable_checkpointing=True)
        )
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)
        return callback, csv_logger

    first, _ = fit(2)
    first_records = read_records(energy_dir)
    checkpoint = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    saved = checkpoint["callbacks"][first.state_key]
    # The checkpoint is written at the end of epoch 1 while the gap after it is open: its totals
    # (the fallback when the records are gone) hold everything closed by then and that open gap
    # as measured so far.
    last_train = max(i for i, r in enumerate(first_records) if r.phase == "train")
    saved_total_j = sum(t["energy_j"] for t in saved["totals"].values())
    closed_j = sum(r.energy_j for r in first_records[: last_train + 1])
    assert closed_j < saved_total_j <= sum(r.energy_j for r in first_records) * (1 + 1e-9)

    second, csv_logger = fit(4, ckpt_path=ckpt_dir / "last.ckpt")
    records = read_records(energy_dir)
    resumed = records[len(first_records) :]
    assert [(r.phase, r.epoch) for r in records if r.phase == "train"] == [("train", e) for e in range(4)]
    assert {r.run_id for r in records} == {first.tracker.run_id} == {second.tracker.run_id}
    assert {r.attempt for r in first_records} == {0} and {r.attempt for r in resumed} == {1}
    assert len({r.seq for r in records}) == len(records)  # no seq reused after resume
    assert second.tracker.totals["train"].count == 4  # epochs 0-1 from the first attempt, 2-3 measured now
    # Every joule of both attempts, once: the first attempt's records (its last gap, written after
    # the checkpoint, included) and the second's.
    expected_j = sum(r.energy_j for r in records)
    assert second.tracker.total_energy_j == pytest.approx(expected_j, rel=1e-9)
    summary = json.loads((energy_dir / "energy-summary.json").read_text())
    assert summary["energy_kwh"] * 3.6e6 == pytest.approx(expected_j, rel=1e-9)
    assert summary["attempts"] == 2
    # The logged running total continues from the first attempt's.
    logged = csv_scalars(Path(csv_logger.log_dir) / "metrics.csv")["energy_kwh_total"]
    assert len(logged) == 2
    assert logged[0][1] * 3.6e6 > sum(r.energy_j for r in first_records)
    last_train = max(i for i, r in enumerate(records) if r.phase == "train")  # records are in closing order
    assert logged[-1][1] * 3.6e6 == pytest.approx(sum(r.energy_j for r in records[: last_train + 1]), rel=1e-9)


def test_exception_writes_partial_record_and_stops_threads(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(output_dir=tmp_path)
    trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[callback], **trainer_kwargs())
    model = TinyModel(fail_at=(1, 2))
    with pytest.raises(Boom, match="boom at epoch 1 batch 2"):
        trainer.fit(model, *loaders())
    records = read_records(tmp_path)
    train = [r for r in records if r.phase == "train"]
    assert [(r.epoch, r.partial) for r in train] == [(0, False), (1, True)]
    assert train[1].samples == 2 * 8  # the two batches finished before the failure
    assert train[1].step == trainer.global_step == 4 + 2  # where it failed, not the last epoch end's step
    assert train[1].energy_kwh > 0
    assert not any(t.name == "greencallbacks-meter" and t.is_alive() for t in threading.enumerate())
    assert not callback.session.running


def test_two_callbacks_in_one_trainer(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    low = EnergyCallback(intensity=50, output_dir=tmp_path / "low", prefix="low/")
    high = EnergyCallback(intensity=500, output_dir=tmp_path / "high", prefix="high/")
    assert low.state_key != high.state_key
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    csv_logger = L.loggers.CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(
        max_epochs=2, logger=csv_logger, callbacks=[low, high, checkpoint], **trainer_kwargs(enable_checkpointing=True)
    )
    trainer.fit(TinyModel(), *loaders())
    scalars = csv_scalars(Path(csv_logger.log_dir) / "metrics.csv")
    for callback, prefix, intensity in ((low, "low/", 50), (high, "high/", 500)):
        records = read_records(callback.tracker.output_dir)
        train = [r for r in records if r.phase == "train"]
        assert len(train) == 2
        assert all(r.intensity_gco2eq_per_kwh == pytest.approx(intensity) for r in records)
        assert [v for _, v in scalars[prefix + "co2eq_g"]] == pytest.approx([r.co2eq_g for r in train], rel=REL)
        assert [v for _, v in scalars[prefix + "val_energy_kwh"]] == pytest.approx(
            [r.energy_kwh for r in records if r.phase == "validation"], rel=REL
        )
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert {low.state_key, high.state_key} <= set(saved)
    assert saved[low.state_key]["run_id"] != saved[high.state_key]["run_id"]


def test_two_prefixed_callbacks_in_the_default_directory_keep_their_own_summary_through_a_resume(tmp_path):
    """Regression: two callbacks with their own prefix (two grids) and no output_dir both wrote to
    the logger's directory: one energy-summary.json, the last writer's, and a report there took
    the two runs for repeats (a mean ± SE of a 50 and a 500 g/kWh pricing of one training). Now
    each writes to its own energy-<prefix> subdirectory, through a crash and a resume."""
    from greencallbacks import report
    from greencallbacks.tracker import SUMMARY_FILE

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def fit(model, ckpt_path=None):
        low, high = EnergyCallback(intensity=50, prefix="low/"), EnergyCallback(intensity=500, prefix="high/")
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = L.Trainer(max_epochs=3, logger=L.loggers.CSVLogger(tmp_path, name="run"),
                            callbacks=[low, high, checkpoint], **trainer_kwargs(enable_checkpointing=True))
        try:
            trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        except Boom:
            pass
        return low, high

    first = fit(TinyModel(fail_at=(1, 2)))
    second = fit(TinyModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    version_0 = tmp_path / "run" / "version_0"
    for before, after, name, intensity in zip(first, second, ("energy-low", "energy-high"), (50, 500)):
        assert after.tracker.run_id == before.tracker.run_id  # the resume continues each run
        assert before.tracker.output_dir == after.tracker.output_dir == version_0 / name
        records = read_records(version_0 / name)
        assert {r.run_id for r in records} == {before.tracker.run_id}
        assert all(r.intensity_gco2eq_per_kwh == pytest.approx(intensity) for r in records)
        summary = json.loads((version_0 / name / SUMMARY_FILE).read_text())
        assert summary["run_id"] == before.tracker.run_id
        assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert not (version_0 / "energy-records.jsonl").exists()
    # A report over the whole log directory shows two configurations, no mean over them.
    everything = read_records(version_0 / "energy-low") + read_records(version_0 / "energy-high")
    assert len(report.group_runs(everything)) == 2


def test_a_resume_with_corrected_settings_continues_the_run_and_says_so(tmp_path):
    """Regression: the settings are part of the state key, so a fit resumed after a crash with the
    grid corrected (intensity=50 -> country="FR") got no state from Lightning and silently began a
    new run: the crashed attempt left out of the totals, with only Lightning's own warning to add
    an EnergyCallback, which was there. Now it continues the run and says the settings changed."""
    from flow_invariants import check_run

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def fit(model, callback, ckpt_path=None):
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = L.Trainer(max_epochs=3, logger=L.loggers.CSVLogger(tmp_path, name="run"),
                            callbacks=[callback, checkpoint], **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)

    crashed = EnergyCallback(intensity=50)
    with pytest.raises(Boom):
        fit(TinyModel(fail_at=(2, 1)), crashed)
    resumed = EnergyCallback(country="FR")
    with pytest.warns(EnergyWarning, match="other settings than this callback.s.*this fit continues its run"):
        fit(TinyModel(), resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.tracker.run_id == crashed.tracker.run_id
    records = check_run(resumed.tracker.run_id, [tmp_path / "run" / "version_0"])
    train = [(r.epoch, r.attempt, r.partial, r.intensity_zone) for r in records if r.phase == "train"]
    assert train == [(0, 0, False, "user"), (1, 0, False, "user"), (2, 0, True, "user"), (2, 1, False, "FRA")]
    # Another prefix's entry is not taken: that callback's run is not this one's.
    other = EnergyCallback(country="FR", prefix="other/")
    with pytest.warns(UserWarning, match="Please add the following callbacks"):  # Lightning's own
        fit(TinyModel(), other, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert other.tracker.run_id != crashed.tracker.run_id


def test_a_resume_into_another_output_dir_says_where_the_records_are_and_no_more(tmp_path):
    """One directory per job: the output_dir given is in the state key, so a resume into another
    one also warned that the checkpoint's state had "other settings than this callback's"."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def fit(model, callback, ckpt_path=None):
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[callback, checkpoint],
                            **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)

    crashed = EnergyCallback(output_dir=tmp_path / "job1", intensity=50)
    with pytest.raises(Boom):
        fit(TinyModel(fail_at=(2, 1)), crashed)
    resumed = EnergyCallback(output_dir=tmp_path / "job2", intensity=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(TinyModel(), resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    said = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
    assert resumed.tracker.run_id == crashed.tracker.run_id
    assert not [w for w in said if "other settings" in w], said
    assert len([w for w in said if "continues in" in w and str(tmp_path / "job1") in w]) == 1, said
    records = [r for d in ("job1", "job2") for r in read_records(tmp_path / d / "energy-records.jsonl")]
    assert [(r.epoch, r.attempt) for r in records if r.phase == "train"] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    summary = json.loads((tmp_path / "job2" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)


def test_testing_the_best_checkpoint_after_the_fit_continues_the_run_as_it_is(tmp_path):
    """Regression: ``trainer.test(ckpt_path="best")``, Lightning's usual last line, restores the
    callback's state from a checkpoint of the fit that just ran, which was taken for a resume: the
    test record said attempt 1, and the report that the run was resumed from a checkpoint."""
    from flow_invariants import check_run
    from greencallbacks import report

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(intensity=300.0)
    checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    trainer = L.Trainer(max_epochs=3, logger=L.loggers.CSVLogger(tmp_path, name="run"),
                        callbacks=[callback, checkpoint], **trainer_kwargs(enable_checkpointing=True))
    model = TinyModel()
    train_loader, val_loader = loaders()
    trainer.fit(model, train_loader, val_loader)
    run = callback.tracker.run_id
    trainer.test(model, val_loader, ckpt_path="best", verbose=False)
    assert callback.tracker.run_id == run
    records = check_run(run, [tmp_path / "run" / "version_0"])
    assert {r.attempt for r in records} == {0}
    assert [r.samples for r in records if r.phase == "test"] == [VAL_SAMPLES]
    assert "resumed" not in report.render(records, "md")


def test_testing_a_checkpoint_of_an_earlier_attempt_after_a_resumed_fit_adds_no_attempt(tmp_path):
    """The fit crashed, a new callback resumed it (attempt 1); then the test of a checkpoint the
    crashed attempt wrote (Lightning's "best", often) opened attempt 2 of a run that trained twice."""
    import shutil

    from flow_invariants import check_run
    from lightning_models import Boom

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    ckpt = tmp_path / "ckpt"

    def trainer_with(callback):
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=ckpt, save_last=True)
        return L.Trainer(max_epochs=3, logger=False, callbacks=[callback, checkpoint],
                         **trainer_kwargs(enable_checkpointing=True))

    with pytest.raises(Boom):
        trainer_with(EnergyCallback(intensity=300.0, output_dir=tmp_path / "energy")).fit(TinyModel(fail_at=(2, 1)), *loaders())
    shutil.copy(ckpt / "last.ckpt", tmp_path / "attempt0.ckpt")
    callback = EnergyCallback(intensity=300.0, output_dir=tmp_path / "energy")
    trainer = trainer_with(callback)
    trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt / "last.ckpt")
    trainer.test(TinyModel(), loaders()[1], ckpt_path=tmp_path / "attempt0.ckpt", verbose=False)
    records = check_run(callback.tracker.run_id, [tmp_path / "energy"])
    assert {r.attempt for r in records} == {0, 1}  # {0, 1, 2} before
    assert [r.attempt for r in records if r.phase == "test"] == [1]


def test_a_used_callback_can_be_pickled_and_copied(tmp_path):
    """ddp_spawn pickles the Trainer with its callbacks: a callback already used in a fit (a smoke
    test on one device first) held its records writer's lock, and the spawned fit never started."""
    import copy
    import pickle

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(intensity=300.0, output_dir=tmp_path)
    fresh_copy = copy.deepcopy(callback)  # (scikit-learn's clone, ddp_spawn): it shared the drawn run id
    L.Trainer(max_epochs=1, logger=False, callbacks=[callback], **trainer_kwargs()).fit(TinyModel(), *loaders())
    L.Trainer(max_epochs=1, logger=False, callbacks=[fresh_copy], **trainer_kwargs()).fit(TinyModel(), *loaders())
    assert fresh_copy.tracker.run_id != callback.tracker.run_id
    pickle.dumps(callback.session)  # (the callback itself holds Lightning's `log` of this test's local model class)
    clone = copy.deepcopy(callback)
    L.Trainer(max_epochs=1, logger=False, callbacks=[clone], **trainer_kwargs()).fit(TinyModel(), *loaders())
    assert clone.tracker.run_id != callback.tracker.run_id and clone.tracker.ledger.totals["train"].samples > 0


def test_two_callbacks_whose_metric_names_collide_say_so(tmp_path):
    """Two callbacks without their own prefix log the same names, and Lightning keeps one value
    of each: one callback's numbers vanish from every logger. One warning says so."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    first = EnergyCallback(intensity=50, output_dir=tmp_path / "a")
    second = EnergyCallback(intensity=500, output_dir=tmp_path / "b")
    trainer = L.Trainer(max_epochs=1, logger=L.loggers.CSVLogger(tmp_path), callbacks=[first, second], **trainer_kwargs())
    with pytest.warns(EnergyWarning) as caught:
        trainer.fit(TinyModel(), *loaders())
    collisions = [w for w in caught if re.search(r"same metric names \(prefix=''\).*own prefix", str(w.message))]
    assert len(collisions) == 2  # one per callback


def test_a_failing_batch_hook_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    """The per-batch hooks guard themselves (no @never_raises frame): a failure inside still
    warns once for the callback, and the fit, its epochs and the other records carry on."""
    from greencallbacks.tracker import Tracker

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def broken(self, samples, tokens=0):
        raise RuntimeError("counting exploded")

    monkeypatch.setattr(Tracker, "add_samples", broken)
    callback = EnergyCallback(output_dir=tmp_path / "energy")
    trainer = L.Trainer(max_epochs=2, logger=L.loggers.CSVLogger(tmp_path), callbacks=[callback], **trainer_kwargs())
    with pytest.warns(EnergyWarning, match=r"on_train_batch_end failed.*counting exploded.*training continues") as caught:
        trainer.fit(TinyModel(), *loaders())
    assert len([w for w in caught if "failed" in str(w.message)]) == 1  # once, though every batch failed
    assert trainer.current_epoch == 2
    assert [r.epoch for r in read_records(tmp_path / "energy") if r.phase == "train"] == [0, 1]


def test_no_logger_warns_and_still_writes_records(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback()
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, callbacks=[callback], **trainer_kwargs())
    with pytest.warns(EnergyWarning, match="no logger"):
        trainer.fit(TinyModel(), *loaders())
    records = read_records(tmp_path)  # default_root_dir when there is no logger
    assert [r.epoch for r in records if r.phase == "train"] == [0]


def test_fast_dev_run_says_where_the_records_go_as_lightning_suppresses_its_loggers(tmp_path):
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    trainer = L.Trainer(fast_dev_run=2, logger=L.loggers.CSVLogger(tmp_path, name="csv"), default_root_dir=tmp_path,
                        callbacks=[EnergyCallback()], **trainer_kwargs())
    with pytest.warns(EnergyWarning, match=r"no logger in the Trainer \(fast_dev_run suppresses") as caught:
        trainer.fit(TinyModel(), *loaders())
    assert str(tmp_path) in str(next(w.message for w in caught if "fast_dev_run" in str(w.message)))
    assert [r.samples > 0 for r in read_records(tmp_path) if r.phase == "train"] == [True]


def test_fit_test_predict_and_a_second_fit(tmp_path):
    L, EnergyCallback, TinyModel = flavour("pytorch_lightning")
    callback = EnergyCallback(output_dir=tmp_path / "energy")
    csv_logger = L.loggers.CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(max_epochs=1, logger=csv_logger, callbacks=[callback], **trainer_kwargs())
    model = TinyModel()
    train_loader, val_loader = loaders()
    trainer.fit(model, train_loader, val_loader)
    first_run = callback.tracker.run_id
    (results,) = trainer.test(model, val_loader)
    trainer.predict(model, val_loader)
    # test and predict after a fit continue that fit's run.
    assert callback.tracker.run_id == first_run
    records = read_records(tmp_path / "energy")
    test = [r for r in records if r.phase == "test"]
    predict = [r for r in records if r.phase == "predict"]
    assert len(test) == 1 and len(predict) == 1
    assert test[0].samples == predict[0].samples == VAL_SAMPLES
    assert results["test_energy_kwh"] == pytest.approx(test[0].energy_kwh, rel=1e-12)
    scalars = csv_scalars(Path(csv_logger.log_dir) / "metrics.csv")
    assert [v for _, v in scalars["test_energy_kwh_total"]] == pytest.approx([test[0].energy_kwh], rel=1e-9)
    assert [v for _, v in scalars["predict_energy_kwh"]] == pytest.approx([predict[0].energy_kwh], rel=1e-9)
    assert callback.tracker.totals["test"].count == 1 and callback.tracker.totals["train"].count == 1

    # A second fit with the same callback object is a new run: totals start from zero.
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[callback], **trainer_kwargs())
    trainer.fit(TinyModel(), train_loader, val_loader)
    assert callback.tracker.run_id != first_run
    assert callback.tracker.totals["train"].count == 2
    assert callback.tracker.totals["test"].count == 0
    second = [r for r in read_records(tmp_path / "energy") if r.run_id == callback.tracker.run_id]
    assert callback.tracker.total_energy_j == pytest.approx(sum(r.energy_j for r in second), rel=1e-9)
    assert math.isclose(sum(r.energy_j for r in second if r.phase == "train"), callback.tracker.totals["train"].energy_j, rel_tol=1e-9)


@pytest.mark.parametrize("at_validation_end", [False, True], ids=["epoch-end-checkpoint", "validation-end-checkpoint"])
def test_resume_after_a_crash_bills_every_joule_of_both_attempts_once(tmp_path, at_validation_end):
    """Regression: the resumed total was 5 % low (epoch-end checkpoints) and 19 % low (checkpoints
    at a validation end, check_val_every_n_epoch=2): a phase open while the checkpoint was written
    was neither in its totals nor in the catch-up from the records."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    ckpt_dir = tmp_path / "ckpt"

    def fit(model, ckpt_path=None):
        callback = EnergyCallback(intensity=300.0)  # default output: the logger's version_N
        saver = L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_on_train_epoch_end=not at_validation_end)
        logger = L.loggers.CSVLogger(tmp_path, name="logs")
        trainer = L.Trainer(max_epochs=4, logger=logger, callbacks=[callback, saver],
                            **trainer_kwargs(enable_checkpointing=True, check_val_every_n_epoch=2))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        return callback, Path(logger.log_dir)

    with pytest.raises(Boom):
        fit(TinyModel(fail_at=(3, 1)))
    second, second_dir = fit(TinyModel(), ckpt_path=ckpt_dir / "last.ckpt")
    home = second.tracker.output_dir
    assert home == tmp_path / "logs" / "version_0" and second_dir.name == "version_1"  # the run stays in its file
    records = read_records(home)
    assert {r.attempt for r in records} == {0, 1} and {r.run_id for r in records} == {second.tracker.run_id}
    summary = json.loads((home / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    logged = csv_scalars(second_dir / "metrics.csv")["energy_kwh_total"]
    last_train = max(i for i, r in enumerate(records) if r.phase == "train")
    assert logged[-1][1] == pytest.approx(sum(r.energy_kwh for r in records[: last_train + 1]), rel=REL)
    # The crashed attempt's cut-short epoch and the redone one are two records of two attempts.
    epoch3 = [(r.attempt, r.partial) for r in records if r.phase == "train" and r.epoch == 3]
    assert epoch3 == [(0, True), (1, False)]


@pytest.mark.parametrize("checkpoint_step", [6, 8], ids=["inside-an-epoch", "at-the-last-batch"])
def test_a_fit_resumed_inside_an_epoch_bills_the_rest_to_that_epoch(tmp_path, checkpoint_step):
    """Regression: Lightning 2.5+ resumes an epoch that a checkpoint interrupted (here
    every_n_train_steps) without calling on_train_epoch_start. The rest of the epoch was billed
    to `other`, samples and all, and the epoch logged no values. A checkpoint at the fit's very
    last batch (step 8 of 2 epochs of 4 batches) leaves nothing to run in 2.6: no empty training record."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    ckpt_dir = tmp_path / "ckpt"

    class BatchesRun(L.Callback):
        def __init__(self):
            self.per_epoch: dict[int, int] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.per_epoch[trainer.current_epoch] = self.per_epoch.get(trainer.current_epoch, 0) + 1

    def fit(ckpt_path=None):
        callback, ran = EnergyCallback(intensity=300.0), BatchesRun()
        saver = L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_train_steps=1, filename="{step}")
        logger = L.loggers.CSVLogger(tmp_path, name="logs")
        trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback, ran, saver],
                            **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)
        return callback, ran, Path(logger.log_dir)

    fit()
    callback, ran, log_dir = fit(ckpt_dir / f"step={checkpoint_step}.ckpt")
    records = read_records(callback.tracker.output_dir)
    resumed = [r for r in records if r.attempt == 1]
    assert [r.samples for r in resumed if r.phase == "other"] == [0] * sum(r.phase == "other" for r in resumed)
    train = [r for r in resumed if r.phase == "train"]
    # One record for each epoch that ran batches, and none for an epoch that ran none. How many
    # batches a resumed epoch runs is Lightning's: at step 6, 2.6 runs the last 2 of epoch 1, 2.2
    # the last 3; at step 8, 2.6 runs none.
    assert {r.epoch: r.samples for r in train} == {epoch: n * BATCH for epoch, n in ran.per_epoch.items()}
    assert not any(r.partial for r in train)
    if checkpoint_step == 6:
        assert 0 < ran.per_epoch[1] < TRAIN_SAMPLES // BATCH
    metrics_csv = log_dir / "metrics.csv"  # not written by a fit with nothing to run
    logged = csv_scalars(metrics_csv).get("energy_kwh", []) if metrics_csv.exists() else []
    assert [v for _, v in logged] == pytest.approx([r.energy_kwh for r in train], rel=REL)
    summary = json.loads((callback.tracker.output_dir / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)


def test_the_open_phases_a_checkpoint_saves_end_at_its_step(tmp_path):
    """A resume after a kill writes the phases open at the checkpoint as carried records; they
    were saved at the last boundary's step (step 4 for a checkpoint at step 6)."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    ckpt_dir = tmp_path / "ckpt"
    saver = L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_train_steps=1, filename="{step}")
    callback = EnergyCallback(intensity=300.0, output_dir=tmp_path / "energy")
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[callback, saver], **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(TinyModel(), *loaders())
    for step in (2, 6):
        checkpoint = torch.load(ckpt_dir / f"step={step}.ckpt", weights_only=False)
        state = checkpoint["callbacks"][callback.state_key]
        assert [r["step"] for r in state["open_records"] if r["phase"] == "train"] == [step]


def test_a_fit_stopped_by_max_steps_inside_an_epoch_and_resumed_bills_the_rest_to_that_epoch(tmp_path):
    """max_steps ends a fit inside an epoch; its last checkpoint is saved at that epoch's end, so
    Lightning 2.5+ resumes it as restarted_on_epoch_end, runs the epoch's other batches and does
    not call on_train_epoch_start. Those batches were billed to `other`, samples and all, and the
    epoch logged nothing in the resumed attempt."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    ckpt_dir = tmp_path / "ckpt"
    per_epoch = TRAIN_SAMPLES // BATCH

    class BatchesRun(L.Callback):
        def __init__(self):
            self.per_epoch: dict[int, int] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.per_epoch[trainer.current_epoch] = self.per_epoch.get(trainer.current_epoch, 0) + 1

    def fit(max_steps, ckpt_path=None):
        callback, ran = EnergyCallback(intensity=300.0), BatchesRun()
        saver = L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
        trainer = L.Trainer(max_epochs=3, max_steps=max_steps, logger=L.loggers.CSVLogger(tmp_path, name="logs"),
                            callbacks=[callback, ran, saver], **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(TinyModel(), *loaders(), ckpt_path=ckpt_path)
        return callback, ran

    _, first = fit(per_epoch + 2)  # epoch 1 stops after 2 of its batches
    callback, ran = fit(3 * per_epoch, ckpt_dir / "last.ckpt")
    records = read_records(callback.tracker.output_dir)
    assert sum(r.samples for r in records if r.phase == "other") == 0
    trained = {}
    for attempt in (first, ran):
        for epoch, batches in attempt.per_epoch.items():
            trained[epoch] = trained.get(epoch, 0) + batches * BATCH
    billed = {}
    for r in records:
        if r.phase == "train":
            billed[r.epoch] = billed.get(r.epoch, 0) + r.samples
    assert billed == trained and trained[1] == per_epoch * BATCH
    summary = json.loads((callback.tracker.output_dir / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)


def test_one_callback_in_two_trainers_records_each_trainers_test_in_that_trainers_run(tmp_path):
    """tr1.fit, tr2.fit, tr1.test: the test of tr1's model went into tr2's run and directory, and
    tr1's logger got test values whose totals were tr2's. A Trainer that never fitted with the
    callback continues its latest run, as a test after fit does."""
    import pickle

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(intensity=300.0)
    train, val = loaders()

    def trainer(name):
        return L.Trainer(max_epochs=1, logger=L.loggers.CSVLogger(tmp_path, name=name), callbacks=[callback],
                         **trainer_kwargs())

    tr1, tr2, tr3 = trainer("one"), trainer("two"), trainer("three")
    m1 = TinyModel()
    tr1.fit(m1, train)
    run1, dir1 = callback.tracker.run_id, callback.tracker.output_dir
    tr2.fit(TinyModel(), train)
    run2, dir2 = callback.tracker.run_id, callback.tracker.output_dir
    (results,) = tr1.test(m1, val)
    assert [r.phase for r in read_records(dir1) if r.phase == "test"] == ["test"]
    (test,) = [r for r in read_records(dir1) if r.phase == "test"]
    assert results["test_energy_kwh"] == pytest.approx(test.energy_kwh, rel=1e-12), (results, test.energy_kwh)  # float64, not float32
    assert {r.run_id for r in read_records(dir1)} == {run1} and "test" not in {r.phase for r in read_records(dir2)}
    assert {r.run_id for r in read_records(dir2)} == {run2}
    logged = csv_scalars(Path(tr1.logger.log_dir) / "metrics.csv")["test_energy_kwh_total"]
    # Exact (DESIGN 2a: 1e-9), not float32's 3e-8: test values go through pl_module.log as float64.
    assert logged[-1][1] == pytest.approx(sum(r.energy_kwh for r in read_records(dir1) if r.phase == "test"), rel=1e-9)
    tr3.test(m1, val)  # never fitted here: the latest run
    assert callback.tracker.run_id == run1
    unused = EnergyCallback(intensity=300.0)  # ddp_spawn pickles a callback the Trainer was given
    unused._runs_by_trainer[tr3] = unused.session
    assert len(pickle.loads(pickle.dumps(unused))._runs_by_trainer) == 0


@pytest.mark.parametrize("tune", ["lr_find", "scale_batch_size"])
def test_tuning_before_fit_is_a_run_of_its_own_and_its_restore_is_no_resume(tmp_path, tune):
    """Lightning's tuners save a checkpoint, run trial steps, then restore the checkpoint, our
    callback's state included, inside one fit. That restore was taken for a resume: the tuning
    run's one record said attempt 1, with no attempt 0. Now the run goes on as it is: attempt 0,
    the trial steps' energy in it; the fit after it is a new run."""
    import torch
    from lightning.pytorch.tuner import Tuner

    from flow_invariants import check_run
    from tests.fakes.scripted import ScriptedSensor

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class Tunable(TinyModel):
        def __init__(self):
            super().__init__()
            self.batch_size, self.lr = 4, 0.05

        def train_dataloader(self):
            data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
            return torch.utils.data.DataLoader(data, batch_size=self.batch_size)

        def val_dataloader(self):
            return loaders()[1]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0)
    logger = L.loggers.CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[callback], default_root_dir=tmp_path, **trainer_kwargs())
    model = Tunable()
    tuner = Tuner(trainer)
    if tune == "lr_find":
        tuner.lr_find(model, num_training=5, early_stop_threshold=None)
    else:
        tuner.scale_batch_size(model, mode="power", max_trials=2, steps_per_trial=2)
    tuning_run = callback.tracker.run_id
    trainer.fit(model)
    assert callback.tracker.run_id != tuning_run
    log_dir = Path(logger.log_dir)
    tuning = check_run(tuning_run, [log_dir], power_w=50.0, context=tune)
    assert {r.attempt for r in tuning} == {0}
    fit = check_run(callback.tracker.run_id, [log_dir], power_w=50.0, context="fit after " + tune)
    assert [(r.epoch, r.samples) for r in fit if r.phase == "train"] == [(0, 64)]
    # Tuned again after the fit, then tested: the test goes on with the run that trained, not the
    # tuning run (it went to the tuning run, of no training epoch, in 3 of 3 tries).
    trained = callback.tracker.run_id
    if tune == "lr_find":
        tuner.lr_find(model, num_training=5, early_stop_threshold=None)
    else:
        tuner.scale_batch_size(model, mode="power", max_trials=2, steps_per_trial=2)
    assert callback.tracker.run_id != trained
    trainer.test(model, loaders()[1])
    assert callback.tracker.run_id == trained
    tested = check_run(trained, [log_dir], power_w=50.0, context=f"test after {tune} after fit")
    assert [r.samples for r in tested if r.phase == "test"] == [16]


def test_a_second_fit_on_one_trainer_predicts_only_its_own_epochs(tmp_path):
    """Regression: a second ``fit`` on the same Trainer goes on from epoch 3 to ``max_epochs`` 9:
    a new run of 6 epochs, whose prediction at its last epoch still counted 3 epochs to come
    (9 - 6 finished), 1.5 times its total. Now it is that total and the last epoch's short tail."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(intensity=300.0)
    logger = L.loggers.CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_epochs=3, logger=logger, callbacks=[callback], **trainer_kwargs())
    model = TinyModel()
    trainer.fit(model, *loaders())
    first = callback.tracker.run_id
    trainer.fit_loop.max_epochs = 9
    trainer.fit(model, *loaders())
    assert callback.tracker.run_id != first
    assert_last_prediction_is_the_total_and_a_tail(logger, callback)


@pytest.mark.parametrize("max_epochs", [100, -1])
def test_a_fit_that_max_steps_ends_predicts_the_steps_it_will_run(tmp_path, max_epochs):
    """Regression: ``max_steps=18`` over 4-step epochs ends the fit inside epoch 4. With
    ``max_epochs=100`` the prediction priced 95 epochs more (14 times the fit's total at its last
    epoch: a budget's predicted stop would have ended it early); with ``max_epochs=-1`` it
    predicted nothing. Now the steps left are priced at the steps an epoch takes."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(intensity=300.0)
    logger = L.loggers.CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=18, logger=logger, callbacks=[callback], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    assert (trainer.global_step, trainer.current_epoch) == (18, 5)  # epochs 0-4, the last of 2 steps
    assert_last_prediction_is_the_total_and_a_tail(logger, callback)


def test_a_fit_that_max_time_ends_predicts_the_time_it_has_left(tmp_path):
    """Regression: ``max_time`` adds a Timer that ends the fit after the epochs that fit in it;
    with ``max_epochs=1000`` the prediction priced them all (7 times the total in a probe). The
    Timer's public ``time_remaining`` now bounds the epochs left. Here it says no time is left
    at any epoch end (a duration that never stops the fit, so the test does not race the clock):
    every prediction is the total so far and a tail, though 5 epochs of 6 remain at the first."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class NoTimeLeft(L.callbacks.Timer):
        def time_remaining(self, stage="train"):
            return 0.0

    callback = EnergyCallback(intensity=300.0)
    logger = L.loggers.CSVLogger(tmp_path, name="logs")
    trainer = L.Trainer(max_epochs=6, logger=logger, callbacks=[callback, NoTimeLeft(duration={"days": 1})],
                        **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    assert trainer.current_epoch == 6
    logged = csv_scalars(Path(logger.log_dir) / "metrics.csv")
    total, predicted = dict(logged["energy_kwh_total"]), dict(logged["energy_kwh_predicted"])
    assert len(predicted) == 3  # from epoch 3 on
    for step, value in predicted.items():
        assert 0.0 <= value - total[step] <= costliest_epoch_kwh(callback)


def test_an_epoch_another_callback_adds_when_the_fit_starts_is_predicted(tmp_path):
    """Regression: StochasticWeightAveraging on a model with BatchNorm adds an epoch to
    ``max_epochs`` in its ``on_fit_start``, after the callback had read the limit at setup: at the
    4th epoch of 5 the prediction was the total and a tail, as if the run ended there (14.7 % low
    in a probe). Now the limit is read when training starts."""
    import torch

    from tests.fakes.scripted import ScriptedSensor

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class WithBatchNorm(TinyModel):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))

    callback = EnergyCallback(sensors=[ScriptedSensor("gpu", time.monotonic, 50.0)], intensity=300.0)
    logger = L.loggers.CSVLogger(tmp_path, name="logs")
    swa = L.callbacks.StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    trainer = L.Trainer(max_epochs=4, logger=logger, callbacks=[callback, swa], **trainer_kwargs())
    trainer.fit(WithBatchNorm(), loaders()[0])
    assert trainer.current_epoch == 5  # SWA's extra epoch ran
    logged = csv_scalars(Path(logger.log_dir) / "metrics.csv")
    total, predicted = logged["energy_kwh_total"], dict(logged["energy_kwh_predicted"])
    epochs = [b - a for (_, a), (_, b) in zip([(0, 0.0)] + total[:-1], total)]
    fourth_step = total[3][0]
    assert predicted[fourth_step] - total[3][1] >= 0.5 * min(epochs[1:4])  # one epoch still to come


def assert_last_prediction_is_the_total_and_a_tail(logger, callback):
    """At the last epoch's end nothing is left to train: the prediction is the total so far plus the
    mean tail of an epoch (what follows its training), which is part of that mean epoch's cost, so
    it exceeds the total by less than the costliest epoch. Exact, whatever the machine's load
    (a ratio bound of 1.2 failed at 1.31 under load); epochs still priced would exceed it."""
    logged = csv_scalars(Path(logger.log_dir) / "metrics.csv")
    total, predicted = dict(logged["energy_kwh_total"]), dict(logged["energy_kwh_predicted"])
    last_step = max(total)
    assert max(predicted) == last_step  # predicted at the last epoch's end
    assert 0.0 <= predicted[last_step] - total[last_step] <= costliest_epoch_kwh(callback)


def costliest_epoch_kwh(callback) -> float:
    """The most any epoch of the callback's run cost (all its records), a hair of rounding over."""
    per_epoch = {}
    for record in read_records(callback.tracker.output_dir):
        if record.run_id == callback.tracker.run_id and record.epoch is not None:
            per_epoch[record.epoch] = per_epoch.get(record.epoch, 0.0) + record.energy_kwh
    return max(per_epoch.values()) * (1 + 1e-6)


def test_a_damaged_energy_entry_in_a_checkpoint_does_not_stop_the_resume(tmp_path):
    """Lightning restores callback states inside ``fit``: a raise there ended the fit before its
    first epoch (ValueError for a ``seq`` that is no number). Now one warning, and the fit goes
    on as a new run, measured."""
    import torch

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[EnergyCallback(intensity=300.0), saver],
                        **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(TinyModel(), *loaders())
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("EnergyCallback")]
    checkpoint["callbacks"][key]["seq"] = "abc"
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    callback = EnergyCallback(intensity=300.0)
    trainer = L.Trainer(max_epochs=3, default_root_dir=tmp_path, callbacks=[callback], **trainer_kwargs())
    with pytest.warns(EnergyWarning, match="unreadable"):
        trainer.fit(TinyModel(), *loaders(), ckpt_path=tmp_path / "damaged.ckpt")
    assert trainer.current_epoch == 3
    records = [r for r in read_records(callback.tracker.output_dir) if r.run_id == callback.tracker.run_id]
    assert [(r.epoch, r.attempt) for r in records if r.phase == "train"] == [(1, 0), (2, 0)]
    summary = json.loads((callback.tracker.output_dir / "energy-summary.json").read_text())
    assert summary["run_id"] == callback.tracker.run_id
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)


def test_a_failing_state_dict_warns_and_checkpoints_and_resumes_go_on(tmp_path, monkeypatch):
    """Lightning calls ``state_dict`` when it saves a checkpoint, outside any hook: a failure
    there ended the fit. Now one warning; the checkpoint is saved with an empty entry, and a
    resume from it is a new run."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(intensity=300.0)

    def broken():
        raise OSError("disk gone")

    monkeypatch.setattr(callback.session, "state_dict", broken)
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[callback, saver],
                        **trainer_kwargs(enable_checkpointing=True))
    with pytest.warns(EnergyWarning, match="state_dict failed"):
        trainer.fit(TinyModel(), *loaders())
    assert trainer.current_epoch == 2
    resumed = EnergyCallback(intensity=300.0)
    trainer = L.Trainer(max_epochs=3, default_root_dir=tmp_path, callbacks=[resumed], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.tracker.run_id != callback.tracker.run_id and resumed.tracker.ledger.attempt == 0


@pytest.mark.parametrize("given, mode, samples", [
    ("dict", None, 5 * 8 + 20),  # Lightning's default, max_size_cycle: the 4-batch loader cycles to 5 steps
    ("list", None, 5 * 8 + 20),
    ("combined", "max_size", 32 + 20),  # the exhausted loader's slot is None
    ("combined", "min_size", 32 + 4 * 4),
])
def test_several_training_loaders_count_every_batch_of_each(tmp_path, given, mode, samples):
    """Regression: with several training iterables each batch is ``{"a": [x, y], "b": [x, y]}``
    (or a list of them), which counted as 2 samples a step as a whole. Each part is counted."""
    import torch
    from lightning.pytorch.utilities import CombinedLoader

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    class TwoStreams(TinyModel):
        def training_step(self, batch, batch_idx):
            parts = [p for p in (batch.values() if isinstance(batch, dict) else batch) if p is not None]
            return sum(torch.nn.functional.mse_loss(self(x), y) for x, y in parts)

    def loader(n, size):
        data = torch.utils.data.TensorDataset(torch.randn(n, 4), torch.randn(n, 1))
        return torch.utils.data.DataLoader(data, batch_size=size)

    streams = {"a": loader(32, 8), "b": loader(20, 4)}  # 4 and 5 batches
    train = {"dict": streams, "list": list(streams.values()),
             "combined": CombinedLoader(streams, mode=mode) if mode else None}[given]
    callback = EnergyCallback(intensity=300.0, output_dir=tmp_path)
    L.Trainer(max_epochs=1, logger=False, callbacks=[callback], **trainer_kwargs()).fit(TwoStreams(), train)
    (record,) = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert (record.samples, record.samples_counted) == (samples, True)


def test_energy_values_add_no_logger_save_and_still_reach_the_file(tmp_path):
    """A logger's ``save`` (the CSV logger appends to its file, TensorBoard flushes its events)
    costs 0.4-1 ms on the training thread; Lightning's connector adds one to every log call. Ours
    go through ``log_metrics`` only, and to the CSV logger's writer, whose ``log_metrics`` also
    saves at every ``flush_logs_every_n_steps`` (here 1: at every call): the fit makes as many
    saves as with an empty callback, and the file still holds every epoch's values and the step
    values once the fit ends."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    saves, loggers = {}, {}
    for name, callback in (("empty", L.Callback()), ("ours", EnergyCallback(intensity=300.0))):
        logger = L.loggers.CSVLogger(tmp_path, name=name, flush_logs_every_n_steps=1)
        count = [0]

        def counting_save(save=logger.save, count=count):
            count[0] += 1
            save()

        logger.save = counting_save
        trainer = L.Trainer(max_epochs=3, logger=logger, callbacks=[callback], **trainer_kwargs(log_every_n_steps=2))
        trainer.fit(TinyModel(), *loaders())
        saves[name], loggers[name] = count[0], logger
    assert saves["ours"] == saves["empty"] > 0
    logged = csv_scalars(Path(loggers["ours"].log_dir) / "metrics.csv")
    records = read_records(Path(loggers["ours"].log_dir))
    train = [r for r in records if r.phase == "train"]
    assert [v for _, v in logged["energy_kwh"]] == pytest.approx([r.energy_kwh for r in train], rel=REL)
    assert len(logged["val_energy_kwh"]) == 3
    assert len(logged["energy_kwh_total"]) > len(train)  # the step values too


def test_a_prefixed_csv_logger_gets_the_values_through_its_own_log_metrics(tmp_path):
    """The writer shortcut skips the logger's prefix, so a prefixed CSV logger is given the values
    through ``log_metrics``: every epoch's values reach the file under the prefixed names."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    logger = L.loggers.CSVLogger(tmp_path, name="run", prefix="p")
    callback = EnergyCallback(intensity=300.0)
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    logged = csv_scalars(Path(logger.log_dir) / "metrics.csv")
    train = [r for r in read_records(callback.tracker.output_dir) if r.phase == "train"]
    assert "energy_kwh" not in logged
    assert [v for _, v in logged["p-energy_kwh"]] == pytest.approx([r.energy_kwh for r in train], rel=REL)


def test_a_csv_logger_subclass_with_its_own_log_metrics_gets_every_value_through_it(tmp_path):
    """A user's override of ``log_metrics`` (filtering, renaming) is theirs: the writer shortcut
    is taken only with Lightning's own, so the override sees every epoch's values."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    seen = []

    class FilteringCSVLogger(L.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):
            seen.append(dict(metrics))
            super().log_metrics(metrics, step)

    logger = FilteringCSVLogger(tmp_path, name="run")
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[EnergyCallback(intensity=300.0)], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    assert sum("energy_kwh" in m for m in seen) == 2 and sum("val_energy_kwh" in m for m in seen) == 2


def test_without_lightnings_private_logging_seam_epoch_values_still_reach_the_loggers(tmp_path, monkeypatch):
    """A future Lightning without ``_batches_that_stepped``: per-epoch values still reach every
    logger, at the global step, with one warning."""
    import greencallbacks.lightning._logging as logging_part
    import greencallbacks.lightning._training as training_part

    for reader in (training_part, logging_part):  # each reads the seam (step values; where values go)
        monkeypatch.setattr(reader, "_batches_that_stepped", lambda trainer: None)
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    logger = L.loggers.CSVLogger(tmp_path, name="run")
    callback = EnergyCallback(intensity=300.0)
    trainer = L.Trainer(max_epochs=3, logger=logger, callbacks=[callback], **trainer_kwargs())
    with pytest.warns(EnergyWarning, match="_batches_that_stepped") as caught:
        trainer.fit(TinyModel(), *loaders())
    assert sum("_batches_that_stepped" in str(w.message) for w in caught) == 1
    logged = csv_scalars(Path(logger.log_dir) / "metrics.csv")
    records = read_records(callback.tracker.output_dir)
    train = [r for r in records if r.phase == "train"]
    assert [v for _, v in logged["energy_kwh"]] == pytest.approx([r.energy_kwh for r in train], rel=REL)
    assert len(logged["val_energy_kwh"]) == 3


def test_every_option_can_be_set_from_lightning_cli_and_its_yaml(tmp_path):
    """LightningCLI (jsonargparse) reads the callback's signature: the session's options hidden in
    **kwargs (run_id, budget, carbon_aware, embodied, ...) were refused ("Option 'run_id' is not
    accepted"), a Budget could not be built from its class_path, and a phantom `framework` was
    offered and dropped."""
    import inspect

    from greencallbacks.session import SESSION_ARGUMENTS

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    named = inspect.signature(EnergyCallback.__init__).parameters
    assert SESSION_ARGUMENTS <= set(named) and "framework" not in named
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse")
    from lightning.pytorch.cli import LightningCLI

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return loaders()[0]

        def val_dataloader(self):
            return loaders()[1]

    config = tmp_path / "config.yaml"
    config.write_text(f"""
trainer:
  max_epochs: 3
  logger: false
  enable_progress_bar: false
  enable_checkpointing: false
  enable_model_summary: false
  callbacks:
    - class_path: greencallbacks.lightning.EnergyCallback
      init_args:
        output_dir: {tmp_path / "energy"}
        run_id: from-yaml
        intensity: 100.0
        embodied: false
        budget:
          class_path: greencallbacks.Budget
          init_args: {{kwh: 1.0e-15, on_exceed: stop}}
""")
    with pytest.warns(EnergyWarning, match="budget"):
        LightningCLI(TinyModel, Data, args=["fit", "--config", str(config)], save_config_callback=None)
    records = read_records(tmp_path / "energy")
    assert {r.run_id for r in records} == {"from-yaml"}
    assert [r.epoch for r in records if r.phase == "train"] == [0]  # the budget stopped the fit after epoch 0
    summary = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())
    assert summary["budget"]["stopped"] is True


def test_a_run_id_given_again_in_a_new_logger_version_is_a_run_of_its_own(tmp_path):
    """Each fit opens a new version_N of the logger: a second fit with run_id="exp" was recorded
    as "exp" again, one version beside the other, and `greencallbacks report` over both refused
    them (two records seq 0 of run 'exp')."""
    from greencallbacks.cli import main

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    for _ in range(2):
        trainer = L.Trainer(max_epochs=1, logger=L.loggers.CSVLogger(tmp_path, name="csv"),
                            callbacks=[EnergyCallback(run_id="exp", intensity=100.0)], **trainer_kwargs())
        trainer.fit(TinyModel(), *loaders())
    ids = [{r.run_id for r in read_records(tmp_path / "csv" / f"version_{n}")} for n in (0, 1)]
    assert ids == [{"exp"}, {"exp-2"}]
    assert main(["report", str(tmp_path / "csv"), "--format", "json"]) == 0
