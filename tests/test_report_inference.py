"""Reports: an evaluation after training (Lightning's ``validate`` after ``fit``, HF's ``evaluate``
after ``train``) counts in the run's totals, never among its epochs; older records' CPU estimate is
stated as what their note says it was."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pytest

from greencallbacks import report
from greencallbacks.records import read_records

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _lightning():
    pytest.importorskip("torch")  # the core's own runs have no torch
    pytest.importorskip("lightning")
    from tests.lightning_models import flavour

    return flavour("lightning.pytorch")


def _validation_by_epoch(records, attempt=0):
    """Each epoch's validation energy in ``attempt``: read before the call after training, what
    the training loop validated."""
    return {r.epoch: r.energy_kwh for r in records if r.attempt == attempt and r.phase == "validation"}


def _assert_totals_hold_everything(records):
    summary = report.summary(records)
    validation = [r for r in records if r.phase == "validation"]
    assert summary["phases"]["validation"]["energy_kwh"]["mean"] == pytest.approx(sum(r.energy_kwh for r in validation),
                                                                                rel=1e-12)
    assert summary["total"]["energy_kwh"]["mean"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)


def test_lightning_validate_after_fit_is_in_the_totals_not_an_epoch_that_never_trained(tmp_path):
    """A 2-epoch fit, then ``trainer.validate``: Lightning stamps that validation with epoch 2
    (max_epochs). The report showed an epoch 2 of 0 samples, 0 kWh, "complete" (md, CSV, JSON)."""
    L, EnergyCallback, TinyModel = _lightning()  # skips where torch or Lightning is missing
    from tests.lightning_models import loaders, trainer_kwargs

    model = TinyModel()
    trainer = L.Trainer(max_epochs=2, logger=False, callbacks=[EnergyCallback(output_dir=tmp_path, intensity=100.0)],
                        **trainer_kwargs())
    trainer.fit(model, *loaders())
    in_loop = _validation_by_epoch(read_records(tmp_path))
    trainer.validate(model, loaders()[1], verbose=False)
    records = read_records(tmp_path)
    assert [r.epoch for r in records if r.phase == "validation"] == [0, 1, 2]  # what Lightning writes
    assert sorted(in_loop) == [0, 1]
    rows = report.epoch_rows(records)
    assert [row["epoch"] for row in rows] == [0, 1]
    assert [row["val_energy_kwh"] for row in rows] == [pytest.approx(in_loop[0], rel=1e-12),
                                                       pytest.approx(in_loop[1], rel=1e-12)]
    assert all(row["train_samples"] == 32 for row in rows)
    # The per-epoch means (one run: the run's own values) and every format.
    epochs = report.epoch_summary(records)
    assert [row["label"] for row in epochs] == ["0", "1"]
    assert [row["val_energy_kwh"]["mean"] for row in epochs] == [pytest.approx(in_loop[e], rel=1e-12) for e in (0, 1)]
    text = report.render(records, "md")
    assert not any(line.startswith("| 2 ") for line in text.splitlines()), text
    assert "Validation run after the training" in text
    assert [row["epoch"] for row in csv.DictReader(io.StringIO(report.render(records, "csv")))] == ["0", "1"]
    _assert_totals_hold_everything(records)


def test_lightning_validate_after_a_resumed_fit_keeps_the_resumed_validation_in_its_epoch(tmp_path):
    """A fit crashes in epoch 1, a new trainer resumes it from the end of epoch 0 and validates
    after: the report had a row ``2 (attempt 1)``; the resume's own validation of epoch 1 stays."""
    L, EnergyCallback, TinyModel = _lightning()  # skips where torch or Lightning is missing
    from tests.lightning_models import Boom, loaders, trainer_kwargs

    energy, ckpt = tmp_path / "energy", tmp_path / "ckpt"

    def trainer():
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=ckpt, save_last=True, save_on_train_epoch_end=True)
        return L.Trainer(max_epochs=2, logger=False, callbacks=[EnergyCallback(output_dir=energy, intensity=100.0),
                                                                checkpoint], **trainer_kwargs(enable_checkpointing=True))

    with pytest.raises(Boom):
        trainer().fit(TinyModel(fail_at=(1, 1)), *loaders())
    resumed, model = trainer(), TinyModel()
    resumed.fit(model, *loaders(), ckpt_path=ckpt / "last.ckpt")
    in_loop = _validation_by_epoch(read_records(energy), attempt=1)
    resumed.validate(model, loaders()[1], verbose=False)
    records = read_records(energy)
    assert {r.attempt for r in records} == {0, 1}
    assert [(r.attempt, r.epoch) for r in records if r.phase == "validation"] == [(0, 0), (1, 1), (1, 2)]

    rows = report.epoch_rows(records)
    assert [(row["attempt"], row["epoch"]) for row in rows] == [(0, 0), (0, 1), (1, 1)]
    assert rows[2]["val_energy_kwh"] == pytest.approx(in_loop[1], rel=1e-12)
    labels = [row["label"] for row in report.epoch_summary(records)]
    assert labels == ["0", "1 (attempt 0: cut short, redone)", "1"]
    assert "(attempt 1)" not in report.render(records, "md")
    assert not report.cut_short(report.configuration(records))
    _assert_totals_hold_everything(records)


def test_hf_evaluate_after_train_adds_nothing_to_the_last_epochs_validation(tmp_path):
    """``trainer.evaluate()`` after ``train()`` is stamped with the last epoch: its energy was added
    to that epoch's validation column (1.436e-7 + 1.231e-7 shown as 2.667e-7 kWh)."""
    pytest.importorskip("transformers")
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, tiny_model, training_args

    out = tmp_path / "out"
    trainer = Trainer(model=tiny_model(), args=training_args(out), train_dataset=TokenDataset(TRAIN_SAMPLES),
                      eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                      callbacks=[EnergyCallback(output_dir=out, intensity=400.0)])
    trainer.train()
    in_loop = _validation_by_epoch(read_records(out))
    trainer.evaluate()
    records = read_records(out)
    assert [r.epoch for r in records if r.phase == "validation"] == [0, 1, 1]  # what HF writes
    rows = report.epoch_rows(records)
    assert [row["epoch"] for row in rows] == [0, 1]
    assert [row["val_energy_kwh"] for row in rows] == [pytest.approx(in_loop[0], rel=1e-12),
                                                       pytest.approx(in_loop[1], rel=1e-12)]
    epochs = report.epoch_summary(records)
    assert epochs[1]["val_energy_kwh"]["mean"] == pytest.approx(in_loop[1], rel=1e-12)
    _assert_totals_hold_everything(records)


def test_older_records_of_the_per_core_default_are_not_said_to_use_a_tdp():
    """Records written before the CPU estimate named its default in its source (docs/example-records.jsonl's
    real runs, their CPU component as such a record has it: until 2026-12-06 the example was of
    them). Their source says "TDP x CPU time", their note "not in the TDP table: assumed 10 W per
    physical core"; the paper statement said the first."""
    older = {"source": "TDP x CPU time", "note": "CPU 'AMD EPYC' not in the TDP table: assumed 10 W per physical core "
                                                  "x 2 cores; pass cpu_tdp_w= (per socket) for a better estimate"}
    records = [dataclasses.replace(r, components=[{**c, **older} if c["kind"] == "cpu" else c for c in r.components])
               for r in read_records(DOCS / "example-records.jsonl")]
    sentence = report.method_sentence(records)
    assert sentence.startswith("CPU energy estimated from a default of 10 W per physical core x CPU time (no TDP "
                               "found for CPU 'AMD EPYC'; the default is greencallbacks' assumption"), sentence
    assert "TDP x CPU time" not in sentence

    def with_cpu_note(note):
        return [dataclasses.replace(r, components=[{**c, "note": note} if c["kind"] == "cpu" else c for c in r.components])
                for r in records]

    arm = with_cpu_note("CPU 'Arm Neoverse-N1' not in the TDP table: assumed 3 W per physical core x 64 cores; "
                        "pass cpu_tdp_w= (per socket) for a better estimate")
    assert ("CPU energy estimated from a default of 3 W per physical core x CPU time (no TDP found for CPU "
            "'Arm Neoverse-N1');") in report.method_sentence(arm)
    # An older record whose CPU the table knew did use its TDP: said as it was.
    known = with_cpu_note("TDP 125 W per socket x 1 socket(s) for 'Intel(R) Core(TM) i9-9900K CPU @ 3.60GHz' "
                          "(matched 'Core i9-9900K' in cpu_tdp.csv from CodeCarbon's CPU table, MIT licence)")
    assert report.method_sentence(known).startswith("CPU energy estimated from TDP x CPU time;")
