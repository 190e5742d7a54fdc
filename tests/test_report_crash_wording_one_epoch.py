"""The statement's words for an epoch a crash cut short inside its training, in a one-epoch
fine-tune resumed from a checkpoint inside it (HF ``save_steps``): the resume trains the epoch's
rest, fewer samples than the crashed attempt had trained. Sized by that rest, the crashed training
read as one that had run every batch: "resumed by a later attempt after a crash at its end"."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from greencallbacks.cli import main  # noqa: E402
from tests.test_hf_everyday import CrashAt, make_trainer, new_callback  # noqa: E402


def test_a_one_epoch_fine_tune_crashed_inside_its_training_is_said_cut_short(tmp_path, capsys):
    out = tmp_path / "out"
    settings = dict(num_train_epochs=1, eval_strategy="no", save_strategy="steps", save_steps=1)
    first = make_trainer(out, new_callback(), [CrashAt(3)], **settings)  # 3 of its 4 steps: 24 of 30 samples
    with pytest.raises(RuntimeError, match="crash at step"):
        first.train()
    resumed = make_trainer(out, new_callback(), **settings)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))  # steps 3 and 4: 14 samples
    capsys.readouterr()
    assert main(["report", str(out), "--format", "json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["configurations"]
    trained = [(row["attempt"], row["epoch"], row["train_samples"], row["partial"]) for row in group["epoch_rows"]]
    assert trained == [(0, 0, 24, True), (1, 0, 14, False)]
    assert "after a crash at its end" not in group["statement"], group["statement"]
    assert "1 epoch cut short by a crash and resumed by a later attempt, both attempts counted" in group["statement"]
