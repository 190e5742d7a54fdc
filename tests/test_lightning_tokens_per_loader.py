"""A ``token_counter`` written for ONE loader's batch (``lambda b: int(b["attention_mask"].sum())``)
in a fit with several training loaders (``fit(model, {"a": dl_a, "b": dl_b})``), whose steps are
given one batch of each, and with a validation ``CombinedLoader`` in a mode other than "sequential".

The counter is handed the batch the step is given first (the README's promise, which a counter
written for the combined batch relies on: ``test_lightning_tokens``); where it fails there, it is
handed each loader's batch, and their counts summed, where it counts every one. Until 2026-12-06 the
epochs had no tokens (``tokens: null``, no ``energy_j_per_token``, a warning) where the steps had
been given 64 a training epoch. A counter that fails on a loader's batch too still leaves the phase
``tokens_counted: false``, with one warning about the batch the step is given.
"""

from __future__ import annotations

import csv
import warnings

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from greencallbacks.lightning import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from test_lightning_tokens import TwoLoaders, loader  # noqa: E402


def tokens_of_one_loader(batch: dict) -> int:
    """The user's counter, written for one loader's padded batch."""
    return int(batch["attention_mask"].sum())


def fit_two_loaders(tmp_path, token_counter, *, sample_counter=None):
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import CombinedLoader

    callback = EnergyCallback(output_dir=tmp_path, intensity=100.0, progress_bar=False, token_counter=token_counter,
                              sample_counter=sample_counter)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[callback], logger=CSVLogger(tmp_path),
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, log_every_n_steps=0)
    model = TwoLoaders()
    # Training: "a" 12 samples, "b" 8 cycled to 12 ("max_size_cycle"): 3 steps of 4 + 4 samples.
    validation = CombinedLoader({"a": loader(8, 100), "b": loader(12, 200)}, mode="min_size")  # 2 steps of 4 + 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, {"a": loader(12), "b": loader(8, 50)}, validation)
    said = [str(w.message) for w in caught if "token_counter" in str(w.message)]
    return model, read_records(tmp_path), said


@pytest.mark.parametrize("sample_counter", [None, lambda batch: sum(len(part["labels"]) for part in batch.values())],
                         ids=["default samples", "own sample_counter"])
def test_a_counter_for_one_loaders_batch_counts_each_loaders_batch(tmp_path, sample_counter):
    model, records, said = fit_two_loaders(tmp_path, tokens_of_one_loader, sample_counter=sample_counter)
    assert not said, said
    counted = {(r.phase, r.epoch): (r.samples, r.tokens, r.tokens_counted) for r in records
               if r.phase in ("train", "validation")}
    assert counted == {(phase, epoch): (24 if phase == "train" else 16, model.trained[phase, epoch], True)
                       for phase in ("train", "validation") for epoch in (0, 1)}, (counted, model.trained)
    assert model.trained["train", 0] == 64  # the fixture's figures, which the counts above must not just follow
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).read_text().splitlines()))
    for name, phase in (("energy_j_per_token", "train"), ("val_energy_j_per_token", "validation")):
        logged = [float(row[name]) for row in rows if row.get(name)]
        assert logged == pytest.approx([r.energy_j / r.tokens for r in records if r.phase == phase], rel=1e-6), name


def test_a_counter_that_fails_on_a_loaders_batch_too_leaves_the_phase_uncounted(tmp_path):
    def not_the_longest(batch: dict) -> int:  # fails on a loader's batches padded to 5 tokens (some of them)
        if batch["input_ids"].shape[1] == 5:
            raise KeyError("attention_mask")
        return tokens_of_one_loader(batch)

    def never(batch):
        raise KeyError("attention_mask")

    for counter in (not_the_longest, never):
        _, records, said = fit_two_loaders(tmp_path / counter.__name__, counter)
        # Said once, about the batch the step is given (a dict of the two loaders' batches).
        assert len(said) == 1 and "token_counter raised KeyError" in said[0] and "builtins.dict" in said[0], said
        epochs = [r for r in records if r.phase in ("train", "validation")]
        assert len(epochs) == 4 and not any(r.tokens_counted for r in epochs), (counter.__name__, epochs)
