"""A real Lightning fit whose ``token_counter`` raises on one training batch of one epoch: that
epoch's record says ``tokens_counted: false`` and it logs no ``energy_j_per_token`` (its other
batches' tokens alone over the epoch's whole energy gave a cost per token a third too high); the
other epochs, and that epoch's validation, are exact."""

from __future__ import annotations

import csv
import warnings

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from greencallbacks.lightning import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from lightning_models import BATCH, TRAIN_SAMPLES, VAL_SAMPLES, flavour, loaders, trainer_kwargs  # noqa: E402
from test_lightning_tokens import PerTokenAtEpochEnd  # noqa: E402

TOKENS_PER_SAMPLE = 5
FAILING = ("train", 1, 2)  # the batch the counter raises on: training, epoch 1, batch 2 of 4


def test_an_epoch_whose_token_counter_failed_on_one_batch_logs_no_cost_per_token(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    _, _, TinyModel = flavour("lightning.pytorch")
    where = {"now": None}

    class Where(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            where["now"] = ("train", trainer.current_epoch, batch_idx)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            where["now"] = ("validation", trainer.current_epoch, batch_idx)

    def tokens_of(batch):
        if where["now"] == FAILING:
            raise KeyError("attention_mask")  # one batch of this epoch carries none
        return TOKENS_PER_SAMPLE * len(batch[0])

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False, token_counter=tokens_of)
    shown = PerTokenAtEpochEnd()
    kwargs = {**trainer_kwargs(), "logger": CSVLogger(tmp_path)}
    trainer = L.Trainer(max_epochs=3, callbacks=[Where(), callback, shown], **kwargs)
    train, validation = loaders()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModel(), train, validation)

    records = read_records(tmp_path)
    # The CSV: no cost per token for epoch 1's training, each other one its record's energy over its tokens.
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text().splitlines()))
    for name, energy, phase in (("energy_j_per_token", "energy_kwh", "train"),
                                ("val_energy_j_per_token", "val_energy_kwh", "validation")):
        logged = {int(row["epoch"]): row[name] for row in rows if row.get(energy)}
        expected = {r.epoch: r.energy_j / r.tokens for r in records
                    if r.phase == phase and (phase, r.epoch) != FAILING[:2]}
        assert sorted(logged) == [0, 1, 2], logged
        assert (logged[1] == "") == (phase == "train"), (name, logged)
        assert {epoch: float(value) for epoch, value in logged.items() if value} == pytest.approx(expected, rel=1e-6)
    # Nor did epoch 0's value stand in callback_metrics as epoch 1's.
    assert set(shown.at_train_end[0]) == set(shown.at_train_end[2]) == {"energy_j_per_token", "val_energy_j_per_token"}
    assert set(shown.at_train_end[1]) == {"val_energy_j_per_token"}, shown.at_train_end
    counted = {(r.phase, r.epoch): (r.samples, r.tokens, r.tokens_counted) for r in records
               if r.phase in ("train", "validation")}
    whole, val = TRAIN_SAMPLES * TOKENS_PER_SAMPLE, VAL_SAMPLES * TOKENS_PER_SAMPLE
    assert counted == {
        ("train", 0): (TRAIN_SAMPLES, whole, True), ("validation", 0): (VAL_SAMPLES, val, True),
        # 3 of its 4 batches' tokens: 120 of 160, which gave 4/3 of the epoch's cost per token
        ("train", 1): (TRAIN_SAMPLES, whole - BATCH * TOKENS_PER_SAMPLE, False),
        ("validation", 1): (VAL_SAMPLES, val, True),
        ("train", 2): (TRAIN_SAMPLES, whole, True), ("validation", 2): (VAL_SAMPLES, val, True)}, counted

    said = [str(w.message) for w in caught if "token_counter" in str(w.message)]  # once, saying what it does
    assert len(said) == 1 and "token_counter raised KeyError" in said[0] and "tokens_counted: false" in said[0], said
