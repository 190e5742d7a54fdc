"""HF evaluation on two ranks (torchrun, gloo): the last batch of each rank holds samples that
Accelerate repeats to keep the ranks in step, and its tokens are counted on the samples that are no
repeats (see ``test_hf_eval_repeats_tokens.py``). The user's ``token_counter`` must still run once
per batch: it may be costly (a tokenizer's decode) or count something of its own.

Run under torchrun (``<out> two_ranks``) it is the two-rank evaluation the test checks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "tests")]

from greencallbacks.records import read_records  # noqa: E402
from tests.hf_tiny import EVAL_SAMPLES, SEQ_LEN, TokenDataset, scripted_sensor, tiny_model, training_args  # noqa: E402

EVAL_BATCH = 4  # 10 samples, 8 a step on two ranks: each rank's second batch ends the set with repeats


def _two_ranks(out: str) -> None:
    """Evaluate 10 samples in batches of 4 a rank: rank 0 runs 0-3 then 8, 9 and 2 repeats,
    rank 1 runs 4-7 then 4 repeats. Each rank writes its token_counter's calls and its batches."""
    import torch.distributed as dist
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback

    rank = int(os.environ["RANK"])
    seen = {"calls": 0, "batches": 0}

    def tokens(batch) -> int:
        seen["calls"] += 1
        return int(batch["attention_mask"].sum())

    class Batches(TrainerCallback):
        def on_prediction_step(self, args, state, control, **kwargs):
            seen["batches"] += 1

    callback = EnergyCallback(intensity=300.0, sensors=[scripted_sensor(f"device{rank}")], token_counter=tokens)
    trainer = Trainer(model=tiny_model(), args=training_args(out, eval_strategy="no", per_device_eval_batch_size=EVAL_BATCH),
                      train_dataset=TokenDataset(16), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                      callbacks=[Batches(), callback])
    trainer.evaluate()
    Path(out, f"calls.rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_the_token_counter_runs_once_per_batch_where_the_last_batch_holds_repeats(tmp_path):
    """Regression: the last batch of a rank was counted whole (samples and tokens), then its tokens
    again on its samples that are no repeats: the user's counter ran 3 times for 2 batches a rank."""
    from test_hf_distributed import torchrun

    done = torchrun(__file__, tmp_path, tmp_path, "two_ranks", PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert EVAL_SAMPLES == 10
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"calls.rank{rank}.json").read_text())
        assert seen == {"calls": 2, "batches": 2}, rank
    [record] = [r for r in read_records(tmp_path) if r.phase == "validation"]
    assert (record.ranks, record.samples, record.tokens, record.tokens_counted) == (2, 10, 10 * SEQ_LEN, True)


if __name__ == "__main__":
    {"two_ranks": _two_ranks}[sys.argv[2]](sys.argv[1])
