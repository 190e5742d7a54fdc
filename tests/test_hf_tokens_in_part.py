"""Real HF Trainers whose ``token_counter`` raises on one training batch of one epoch, on one rank
or on one of two: that epoch's record says ``tokens_counted: false`` and its log has no
``energy_j_per_token`` (the other batches' tokens alone over the epoch's whole energy gave too high
a cost per token); the other epochs, and the evaluations, are exact. With HF's own count
(``include_num_input_tokens_seen``) only rank 0 carries the tokens: the other rank's none is no
failure.

Run under torchrun (``<out> two_ranks``) it is the two-rank training the last test checks.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "tests")]

from transformers import Trainer, TrainerCallback  # noqa: E402

from greencallbacks.hf import EnergyCallback  # noqa: E402
from greencallbacks.records import read_records  # noqa: E402
from tests.hf_tiny import (  # noqa: E402
    BATCH, EVAL_SAMPLES, SEQ_LEN, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args)


class Where(TrainerCallback):
    """Which training step of which epoch is running (None outside a training step: an evaluation)."""

    def __init__(self) -> None:
        self.epoch, self.step_in_epoch, self.in_step = 0, -1, False

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch, self.step_in_epoch = int(round(state.epoch or 0)), -1

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_in_epoch += 1
        self.in_step = True

    def on_step_end(self, args, state, control, **kwargs):
        self.in_step = False

    @property
    def now(self):
        return (self.epoch, self.step_in_epoch) if self.in_step else None


def failing_counter(where: Where, at):
    """A token counter (every token is real: the fixture's masks are all ones) that raises at ``at``."""

    def tokens_of(batch):
        if where.now == at:
            raise KeyError("attention_mask")
        return int(batch["attention_mask"].sum())

    return tokens_of


def train_logs(log_history, prefix=""):
    return [entry for entry in log_history if prefix + "energy_kwh" in entry]


def test_an_epoch_whose_token_counter_failed_on_one_batch_logs_no_cost_per_token(tmp_path):
    where = Where()
    callback = EnergyCallback(intensity=300.0, sensors=[scripted_sensor()], token_counter=failing_counter(where, (1, 1)))
    trainer = Trainer(model=tiny_model(), args=training_args(tmp_path, num_train_epochs=3),
                      train_dataset=TokenDataset(TRAIN_SAMPLES), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                      callbacks=[where, callback])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()

    records = read_records(tmp_path)
    train = [r for r in records if r.phase == "train"]
    validation = [r for r in records if r.phase == "validation"]
    logged = train_logs(trainer.state.log_history)
    assert len(logged) == 3
    # Epoch 1 logs none (it logged 176 tokens' cost per token for an epoch of 240); the others, exact.
    assert ["energy_j_per_token" in entry for entry in logged] == [True, False, True]
    for entry, record in zip(logged, train):
        if record.epoch != 1:
            assert entry["energy_j_per_token"] == pytest.approx(record.energy_j / record.tokens, rel=1e-9)
        assert entry["energy_j_per_sample"] == pytest.approx(record.energy_j / record.samples, rel=1e-9)
    evaluated = train_logs(trainer.state.log_history, "eval_")
    assert [entry["eval_energy_j_per_token"] for entry in evaluated] == pytest.approx(
        [r.energy_j / r.tokens for r in validation], rel=1e-9)
    whole = TRAIN_SAMPLES * SEQ_LEN  # 240 a whole epoch: batches of 8, 8, 8 and 6
    assert [(r.epoch, r.tokens, r.tokens_counted) for r in train] == [
        (0, whole, True), (1, whole - BATCH * SEQ_LEN, False), (2, whole, True)]
    assert [(r.tokens, r.tokens_counted) for r in validation] == [(EVAL_SAMPLES * SEQ_LEN, True)] * 3

    said = [str(w.message) for w in caught if "token_counter" in str(w.message)]  # once, saying what it does
    assert len(said) == 1 and "token_counter raised KeyError" in said[0] and "tokens_counted: false" in said[0], said


def _two_ranks(out: str) -> None:
    """Two CPU ranks train 2 epochs twice: with a token counter that raises on rank 1's first step
    of epoch 0 only, then with HF's own count (rank 0's alone, summed over the ranks)."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    for name in ("counter", "hf_count"):
        where = Where()
        counter = failing_counter(where, (0, 0) if rank == 1 else None) if name == "counter" else None
        callback = EnergyCallback(intensity=300.0, sensors=[scripted_sensor(f"device{rank}")], token_counter=counter)
        args = training_args(Path(out, name), **({} if counter else {"include_num_input_tokens_seen": "all"}))
        trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES),
                          eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[where, callback])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        Path(out, name, f"log_history.rank{rank}.json").write_text(json.dumps(trainer.state.log_history))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_token_counter_failing_on_one_rank_leaves_the_epoch_counted_in_part(tmp_path):
    """Rank 1's counter fails on its first batch of epoch 0, rank 0's never: the epoch's record, the
    ranks' sum, held rank 0's tokens and rank 1's other batch's and logged a cost per token on both
    ranks. Now it says ``tokens_counted: false`` and neither rank logs one; HF's own count, which
    only rank 0 carries, is counted whole."""
    from test_hf_distributed import torchrun

    done = torchrun(__file__, tmp_path, tmp_path, "two_ranks", PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # Accelerate deals the batches of 8 (8, 8, 8, 6) to the ranks in turn and pads the last to 8:
    # 2 steps an epoch on each rank, 32 samples of 8 tokens.
    padded = 2 * 2 * BATCH * SEQ_LEN
    for name, epoch_0 in (("counter", (padded - BATCH * SEQ_LEN, False)), ("hf_count", (padded, True))):
        train = [r for r in read_records(tmp_path / name) if r.phase == "train"]
        ranks = [json.loads((tmp_path / name / f"log_history.rank{r}.json").read_text()) for r in (0, 1)]
        logged = [train_logs(history) for history in ranks]
        assert logged[0] == logged[1] and len(logged[0]) == 2, name  # every rank logs the same values
        assert ["energy_j_per_token" in entry for entry in logged[0]] == [epoch_0[1], True], name
        for entry, record in zip(logged[0], train):
            if "energy_j_per_token" in entry:
                assert entry["energy_j_per_token"] == pytest.approx(record.energy_j / record.tokens, rel=1e-9), name
        assert [(r.ranks, r.tokens, r.tokens_counted) for r in train] == [(2, *epoch_0), (2, padded, True)], name


if __name__ == "__main__":
    {"two_ranks": _two_ranks}[sys.argv[2]](sys.argv[1])
