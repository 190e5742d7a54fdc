"""HF evaluation on two ranks (torchrun, gloo) whose batches are not plain dicts of tensors: the
tokens of the last batch are counted on its samples that are no repeats (see
``test_hf_eval_repeats_tokens.py``), and that cut must keep what the ``token_counter`` reads: a
``BatchEncoding`` (read by attribute), a collator's per-sample list beside the tensors.

Run under torchrun (``<out> two_ranks``) it is the two-rank evaluations the test checks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "tests")]

from greencallbacks.records import read_records  # noqa: E402
from tests.hf_tiny import BATCH, EVAL_SAMPLES, SEQ_LEN, TokenDataset, scripted_sensor, tiny_model, training_args  # noqa: E402


def _two_ranks(out: str) -> None:
    """Evaluate 10 samples in batches of 8 a rank (rank 1: samples 8-9 and 6 repeats), twice."""
    import torch
    import torch.distributed as dist
    from transformers import BatchEncoding, Trainer

    from greencallbacks.hf import EnergyCallback

    rank = int(os.environ["RANK"])

    def encoding(features):  # as a tokenizer's pad returns (DataCollatorWithPadding)
        return BatchEncoding({key: torch.stack([f[key] for f in features]) for key in features[0]})

    def with_ids(features):  # a collator's per-sample list beside the tensors
        return {**{key: torch.stack([f[key] for f in features]) for key in features[0]},
                "ids": [str(i) for i in range(len(features))]}

    class IdsDroppingTrainer(Trainer):  # transformers 4 hands the model every key of the batch
        def compute_loss(self, model, inputs, *args, **kwargs):
            if isinstance(inputs, dict) and "ids" in inputs:
                inputs = {key: value for key, value in inputs.items() if key != "ids"}
            return super().compute_loss(model, inputs, *args, **kwargs)

    for kind, collator, counter in (("encoding", encoding, lambda batch: int(batch.attention_mask.sum())),
                                    ("list", with_ids, lambda batch: int(batch["attention_mask"].sum()))):
        callback = EnergyCallback(intensity=300.0, sensors=[scripted_sensor(f"device{rank}")], token_counter=counter)
        trainer = IdsDroppingTrainer(model=tiny_model(), args=training_args(Path(out, kind), num_train_epochs=1, eval_strategy="no"),
                          train_dataset=TokenDataset(16), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                          data_collator=collator, callbacks=[callback])
        trainer.evaluate()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_the_last_batch_cut_to_its_samples_keeps_its_kind(tmp_path):
    """Regression: the last batch was cut to a plain dict, and none with a list in it: a counter
    reading ``batch.attention_mask`` failed on rank 1's, and a batch with per-sample ids was not
    cut; each evaluation said ``tokens_counted: false`` with 64 tokens, where its 10 samples have 80."""
    from test_hf_distributed import torchrun

    done = torchrun(__file__, tmp_path, tmp_path, "two_ranks", PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert EVAL_SAMPLES == 10 and BATCH == 8
    for kind in ("encoding", "list"):
        [record] = [r for r in read_records(tmp_path / kind) if r.phase == "validation"]
        assert (record.ranks, record.samples, record.tokens, record.tokens_counted) == (2, 10, 10 * SEQ_LEN, True), kind


if __name__ == "__main__":
    {"two_ranks": _two_ranks}[sys.argv[2]](sys.argv[1])
