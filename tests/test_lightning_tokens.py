"""Lightning's ``token_counter``: with several loaders at once (several training loaders, each
batch holding one batch of each, and a validation ``CombinedLoader`` in a mode other than
"sequential"), and in an epoch where it counts nothing."""

from __future__ import annotations

import collections
import csv
import warnings

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from torch.utils.data import DataLoader, Dataset  # noqa: E402

from greencallbacks.lightning import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from lightning_models import flavour, loaders, trainer_kwargs  # noqa: E402


class PerTokenAtEpochEnd(L.Callback):
    """The costs per token in ``callback_metrics`` at each training epoch's end (placed after the
    energy callback, whose hook comes first)."""

    def __init__(self) -> None:
        self.at_train_end = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.at_train_end[trainer.current_epoch] = {
            name: float(value) for name, value in trainer.callback_metrics.items() if "per_token" in name}


class Ragged(Dataset):
    """Sequences of 1 to 5 tokens, padded per batch by ``pad``."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.arange(1, 2 + (i + self.offset) % 5)


def pad(items):
    ids = torch.zeros(len(items), max(len(t) for t in items), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(items):
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randn(len(items), 1)}


def loader(n: int, offset: int = 0) -> DataLoader:
    return DataLoader(Ragged(n, offset), batch_size=4, collate_fn=pad)


def tokens_of(batch: dict) -> int:
    """The user's counter, for the batch ``training_step`` is given: one padded batch per loader."""
    return sum(int(part["attention_mask"].sum()) for part in batch.values())


class TwoLoaders(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(8, 4)
        self.head = torch.nn.Linear(4, 1)
        self.trained = collections.Counter()  # (phase, epoch) -> tokens the steps were given

    def _loss(self, part: dict):
        pooled = (self.embedding(part["input_ids"]) * part["attention_mask"][..., None]).sum(1)
        return torch.nn.functional.mse_loss(self.head(pooled), part["labels"])

    def training_step(self, batch, batch_idx):
        self.trained["train", self.current_epoch] += tokens_of(batch)
        return sum(self._loss(part) for part in batch.values())

    def validation_step(self, batch, batch_idx):
        self.trained["validation", self.current_epoch] += tokens_of(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_token_counter_is_handed_the_combined_batch_of_several_loaders(tmp_path):
    """The counter is handed the batch the step is given, as a ``sample_counter`` is. Until
    2026-12-06 it was handed each loader's part, so a counter written for that batch
    (``b["a"]["attention_mask"]``) raised on every part and the epochs had no tokens (64 trained,
    ``tokens: null``, no ``energy_j_per_token``, a warning), while the samples were right."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import CombinedLoader

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False, token_counter=tokens_of)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[callback], logger=CSVLogger(tmp_path),
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, log_every_n_steps=0)
    model = TwoLoaders()
    # Training: "a" 12 samples, "b" 8 cycled to 12 ("max_size_cycle"): 3 steps of 4 + 4 samples.
    train = {"a": loader(12), "b": loader(8, 50)}
    validation = CombinedLoader({"a": loader(8, 100), "b": loader(12, 200)}, mode="min_size")  # 2 steps of 4 + 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train, validation)
    said = [str(w.message) for w in caught if "token_counter" in str(w.message)]
    assert not said, said

    records = read_records(tmp_path)
    counted = {(r.phase, r.epoch): (r.samples, r.tokens) for r in records if r.phase in ("train", "validation")}
    assert counted == {("train", 0): (24, model.trained["train", 0]), ("train", 1): (24, model.trained["train", 1]),
                       ("validation", 0): (16, model.trained["validation", 0]),
                       ("validation", 1): (16, model.trained["validation", 1])}, (counted, model.trained)
    assert model.trained["train", 0] == 64  # the fixture's figures, which the counts above must not just follow

    # The logged cost per token is each epoch record's energy over its tokens.
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text().splitlines()))
    for name, phase in (("energy_j_per_token", "train"), ("val_energy_j_per_token", "validation")):
        logged = [float(row[name]) for row in rows if row.get(name)]
        expected = [r.energy_j / r.tokens for r in records if r.phase == phase]
        assert logged == pytest.approx(expected, rel=1e-6), name


def test_an_epoch_without_tokens_leaves_no_earlier_cost_per_token_in_callback_metrics(tmp_path):
    """Regression: an epoch whose ``token_counter`` fails (warned once per run) has no
    ``energy_j_per_token``; Lightning keeps ``callback_metrics`` over a fit's epochs, so epoch 0's
    value stood there as epoch 1's (to ``ModelCheckpoint(monitor=...)``, to MLflow's autolog), as
    a per-sample cost once did: 0.00043 J/token after a training epoch that counted none. Now the
    name is dropped there, as an uncounted per-sample value is."""
    _, _, TinyModel = flavour("lightning.pytorch")
    epochs = {"now": 0}

    class EpochNow(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            epochs["now"] = trainer.current_epoch

    def tokens_of_epoch_0_only(batch):
        if epochs["now"] == 1:
            raise KeyError("attention_mask")  # this epoch's data carries none
        return 5 * len(batch[0])

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False,
                              token_counter=tokens_of_epoch_0_only)
    shown = PerTokenAtEpochEnd()
    trainer = L.Trainer(max_epochs=2, callbacks=[EpochNow(), callback, shown], logger=False, **trainer_kwargs())
    train, validation = loaders()
    with pytest.warns(UserWarning, match="token_counter raised"):
        trainer.fit(TinyModel(), train, validation)
    tokens = {(r.phase, r.epoch): r.tokens for r in read_records(tmp_path) if r.phase in ("train", "validation")}
    assert tokens == {("train", 0): 160, ("validation", 0): 80, ("train", 1): None, ("validation", 1): None}
    assert set(shown.at_train_end[0]) == {"energy_j_per_token", "val_energy_j_per_token"}
    assert shown.at_train_end[1] == {}, shown.at_train_end
    assert not [name for name in trainer.callback_metrics if "per_token" in name]
