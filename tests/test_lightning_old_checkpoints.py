"""Lightning checkpoints saved by greencallbacks before 2026-12-01 (commit 14b47e6), resumed now.

That version's energy state held the run id, the next seq and the totals, but not where the run's
records were (``records_path``). With the default output directory a resume opens a new
``version_N``: it went on from the checkpoint's totals without the earlier records, so the crashed
attempt's last partial record was in neither the summary nor the logged totals, silently.

The old state is the one saved now without the keys that version did not have (compare
``git show 14b47e6^:src/greencallbacks/tracker.py``, ``state_dict``); the records it wrote then
are read by today's reader as today's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the Lightning adapter tests need it")

from greencallbacks.meter import EnergyWarning  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402

from flow_invariants import check_run  # noqa: E402
from lightning_models import BATCH, TRAIN_SAMPLES, Boom, flavour, loaders, trainer_kwargs  # noqa: E402
from test_lightning import REL, csv_scalars  # noqa: E402

pytestmark = pytest.mark.slow
OLD_KEYS = ("run_id", "seq", "totals", "carbon_aware")  # Tracker.state_dict before 14b47e6
OLD_TOTALS = ("energy_j", "it_energy_j", "co2eq_g", "samples", "duration_s", "count")  # its PhaseTotals


def as_saved_before_records_path(ckpt: Path) -> str:
    """Rewrite ``ckpt``'s EnergyCallback entry as the old version saved it; returns the run id."""
    checkpoint = torch.load(ckpt, weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("EnergyCallback")]
    state = checkpoint["callbacks"][key]
    old = {k: v for k, v in state.items() if k in OLD_KEYS}
    old["totals"] = {phase: {k: t[k] for k in OLD_TOTALS} for phase, t in state["totals"].items()}
    checkpoint["callbacks"][key] = old
    torch.save(checkpoint, ckpt)
    return old["run_id"]


def energy_warnings(caught) -> list[str]:
    """What was said about the resume (not the estimated sensors, nor logger=False)."""
    return [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)
            and "estimated" not in str(w.message) and "found no logger" not in str(w.message)]


@pytest.mark.parametrize("beside_logs", [True, False], ids=["checkpoint-in-log-dir", "checkpoint-apart"])
def test_a_crashed_fit_resumed_from_an_old_checkpoint_continues_its_records(tmp_path, beside_logs):
    """The checkpoint in ``<version_0>/checkpoints`` (ModelCheckpoint's default) or in a directory of
    its own; either way the run's records are found in version_0 and continued there, every joule
    once: records sum to the summary and to the last logged total, samples exact."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def fit(model, ckpt_path=None):
        callback = EnergyCallback(intensity=300.0)  # default output: the logger's version_N
        saver = L.callbacks.ModelCheckpoint(dirpath=None if beside_logs else tmp_path / "ckpt", save_last=True,
                                            save_on_train_epoch_end=True)
        logger = L.loggers.CSVLogger(tmp_path, name="logs")
        trainer = L.Trainer(max_epochs=4, logger=logger, callbacks=[callback, saver], **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        return callback, Path(logger.log_dir)

    with pytest.raises(Boom):
        fit(TinyModel(fail_at=(3, 1)))  # after epoch 2's checkpoint: one batch of epoch 3, then the crash
    first_dir = tmp_path / "logs" / "version_0"
    ckpt = (first_dir / "checkpoints" if beside_logs else tmp_path / "ckpt") / "last.ckpt"
    run_id = as_saved_before_records_path(ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, second_dir = fit(TinyModel(), ckpt_path=ckpt)
    assert energy_warnings(caught) == []
    assert resumed.tracker.run_id == run_id and second_dir.name == "version_1"
    assert resumed.tracker.output_dir == first_dir  # the run stays in its own records file
    records = check_run(run_id, [first_dir, second_dir])  # one home; summary == records, per phase too
    train = [(r.epoch, r.attempt, r.partial, r.samples) for r in records if r.phase == "train"]
    full = TRAIN_SAMPLES
    assert train == [(0, 0, False, full), (1, 0, False, full), (2, 0, False, full), (3, 0, True, BATCH), (3, 1, False, full)]
    summary = json.loads((first_dir / "energy-summary.json").read_text())
    assert summary["attempts"] == 2
    assert summary["phases"]["train"]["samples"] == 4 * full + BATCH
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    logged = csv_scalars(second_dir / "metrics.csv")["energy_kwh_total"]
    last_train = max(i for i, r in enumerate(records) if r.phase == "train")  # records are in closing order
    assert logged[-1][1] == pytest.approx(sum(r.energy_kwh for r in records[: last_train + 1]), rel=REL)


def test_an_old_checkpoint_whose_records_are_gone_says_so_once(tmp_path):
    """Records not where the old version wrote them (the log directory deleted): one warning that
    names the run and what is missing; the run goes on from the checkpoint's totals."""
    import shutil

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def fit(model, ckpt_path=None):
        callback = EnergyCallback(intensity=300.0)
        saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
        trainer = L.Trainer(max_epochs=3, logger=L.loggers.CSVLogger(tmp_path, name="logs"), callbacks=[callback, saver],
                            **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        return callback

    with pytest.raises(Boom):
        fit(TinyModel(fail_at=(2, 1)))
    run_id = as_saved_before_records_path(tmp_path / "ckpt" / "last.ckpt")
    shutil.rmtree(tmp_path / "logs" / "version_0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(TinyModel(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    said = energy_warnings(caught)
    assert len(said) == 1 and run_id in said[0] and "none of its records were found" in said[0], said
    assert resumed.tracker.run_id == run_id and resumed.tracker.totals["train"].count == 3  # 2 from the checkpoint


def test_an_old_checkpoint_resumed_into_another_output_dir_finds_the_one_its_key_names(tmp_path):
    """The old callback's output_dir is in its state key: a resume into another output_dir (one per
    job) takes that entry and finds the earlier records there, as for a checkpoint saved now."""
    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")

    def fit(model, callback, ckpt_path=None):
        saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = L.Trainer(max_epochs=3, logger=False, callbacks=[callback, saver], **trainer_kwargs(enable_checkpointing=True))
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)

    with pytest.raises(Boom):
        fit(TinyModel(fail_at=(2, 1)), EnergyCallback(output_dir=tmp_path / "job1", intensity=50))
    run_id = as_saved_before_records_path(tmp_path / "ckpt" / "last.ckpt")
    resumed = EnergyCallback(output_dir=tmp_path / "job2", intensity=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(TinyModel(), resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    said = energy_warnings(caught)
    assert len(said) == 1 and "continues in" in said[0] and str(tmp_path / "job1") in said[0], said
    records = [r for d in ("job1", "job2") for r in read_records(tmp_path / d) if r.run_id == run_id]
    assert [(r.epoch, r.attempt) for r in records if r.phase == "train"] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    summary = json.loads((tmp_path / "job2" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
