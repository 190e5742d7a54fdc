"""Real HF Trainers with ``include_num_input_tokens_seen``: the run summary's training tokens are
HF's own count (and its records'), after a crash and a resume too, and ``report`` shows them and the
cost per token, recomputed here from the raw records. Tiny BERT of ``hf_tiny``, a scripted
constant-power sensor.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from flow_invariants import meter_threads  # noqa: E402
from greencallbacks import report  # noqa: E402
from greencallbacks.textformat import count_text, joule_text  # noqa: E402
from greencallbacks.units import J_PER_KWH  # noqa: E402
from tests.hf_tiny import SEQ_LEN, TRAIN_SAMPLES  # noqa: E402
from test_hf_everyday import CrashAt, checked, make_trainer, new_callback  # noqa: E402

pytestmark = pytest.mark.slow


def _per_token(records):
    return sum(r.energy_kwh for r in records) * J_PER_KWH / sum(r.tokens for r in records)


def test_a_run_s_summary_and_report_carry_hf_s_token_count(tmp_path):
    out = tmp_path / "out"
    callback = new_callback()
    trainer = make_trainer(out, callback, include_num_input_tokens_seen="all")
    trainer.train()
    records = checked(trainer, callback, out, "train")
    train = [r for r in records if r.phase == "train"]
    seen = trainer.state.num_input_tokens_seen
    assert seen == 2 * TRAIN_SAMPLES * SEQ_LEN == sum(r.tokens for r in train)
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["phases"]["train"]["tokens"] == seen
    assert summary["phases"]["validation"]["tokens"] is None  # HF counts the training's input tokens alone

    data = report.summary(records)
    assert [row["j_per_token"]["mean"] for row in data["epochs"]] == pytest.approx([_per_token([r]) for r in train])
    assert data["phases"]["train"]["tokens"]["mean"] == seen
    assert data["phases"]["train"]["j_per_token"]["mean"] == pytest.approx(_per_token(train))
    assert f", {count_text(seen)} tokens in all)" in data["statement"]
    assert f"), {joule_text(_per_token(train))} per token, and emitted" in data["statement"]
    md = report.render(records, "md")
    assert "| per token (" in md and f"| {TRAIN_SAMPLES * 2} | {seen} |" in md


def test_a_crash_and_a_resume_count_each_attempt_s_tokens_once(tmp_path):
    """Epoch 1 cut short at step 7 (3 of its 4 batches: 24 samples), resumed from the checkpoint of
    epoch 0 and trained whole again: the summary's tokens are every training record's, the tokens
    of both tries of epoch 1 included, as their energy is."""
    out = tmp_path / "out"
    settings = dict(include_num_input_tokens_seen="all", eval_strategy="no", save_strategy="epoch")
    callback = new_callback()
    first = make_trainer(out, callback, [CrashAt(7)], **settings)
    with pytest.raises(RuntimeError, match="crash at step 7"):
        first.train()
    assert not meter_threads()
    resumed_callback = new_callback()
    resumed = make_trainer(out, resumed_callback, **settings)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    records = checked(resumed, resumed_callback, out, "resumed")
    train = [r for r in records if r.phase == "train"]
    assert [(r.attempt, r.epoch, r.tokens, r.partial) for r in train] == [
        (0, 0, TRAIN_SAMPLES * SEQ_LEN, False), (0, 1, 24 * SEQ_LEN, True), (1, 1, TRAIN_SAMPLES * SEQ_LEN, False)]
    tokens = sum(r.tokens for r in train)
    summary = json.loads((out / "energy-summary.json").read_text())
    assert summary["phases"]["train"]["tokens"] == tokens

    data = report.summary(records)
    assert data["phases"]["train"]["tokens"]["mean"] == tokens
    assert data["phases"]["train"]["j_per_token"]["mean"] == pytest.approx(_per_token(train))
    by_label = {row["label"]: row["j_per_token"]["mean"] for row in data["epochs"]}
    assert by_label == pytest.approx({"0": _per_token(train[:1]), "1 (attempt 0: cut short, redone)": _per_token(train[1:2]),
                                      "1": _per_token(train[2:])})
    assert f", {count_text(tokens)} tokens in all; 1 epoch cut short by a crash and redone, both counted)" in data["statement"]
    assert f"), {joule_text(_per_token(train))} per token, and emitted" in data["statement"]
