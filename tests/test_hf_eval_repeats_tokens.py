"""HF evaluation on two ranks (torchrun, gloo): Accelerate completes the last batch with samples
repeated from the data set's start so that the ranks stay in step. The evaluation's samples are the
data set's (HF's count leaves the repeats out); its tokens, from ``token_counter=``, must be those
samples' tokens too, or the cost per token is too low.

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
from tests.hf_tiny import (  # noqa: E402
    BATCH, EVAL_SAMPLES, SEQ_LEN, TokenDataset, scripted_sensor, tiny_model, training_args)


def _two_ranks(out: str) -> None:
    """Two CPU ranks train 1 epoch and evaluate 10 samples in batches of 8 a rank: rank 0 gets
    samples 0-7, rank 1 samples 8-9 and 6 repeated ones."""
    import torch.distributed as dist
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback

    rank = int(os.environ["RANK"])
    callback = EnergyCallback(intensity=300.0, sensors=[scripted_sensor(f"device{rank}")],
                              token_counter=lambda batch: int(batch["attention_mask"].sum()))
    trainer = Trainer(model=tiny_model(), args=training_args(out, num_train_epochs=1),
                      train_dataset=TokenDataset(16), eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1),
                      callbacks=[callback])
    trainer.train()
    trainer.evaluate()
    Path(out, f"log_history.rank{rank}.json").write_text(json.dumps(trainer.state.log_history))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_an_evaluation_s_tokens_on_two_ranks_are_those_of_the_samples_it_counts(tmp_path):
    """Regression: the evaluation counted the data set's 10 samples but the tokens of the 16 the
    ranks ran (128 for 80: 6 repeats of 8 tokens), so its cost per token was 10/16 of the true one."""
    from test_hf_distributed import torchrun

    done = torchrun(__file__, tmp_path, tmp_path, "two_ranks", PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert EVAL_SAMPLES == 10 and BATCH == 8
    validations = [r for r in read_records(tmp_path) if r.phase == "validation"]
    assert len(validations) == 2  # the epoch's and evaluate()'s
    for record in validations:
        assert (record.ranks, record.samples, record.tokens, record.tokens_counted) == (2, 10, 10 * SEQ_LEN, True)
    ranks = [json.loads((tmp_path / f"log_history.rank{r}.json").read_text()) for r in (0, 1)]
    # Every rank logs the same (summed) values; HF's own (eval_runtime) are each rank's.
    logged = [[{k: v for k, v in e.items() if "energy" in k or "co2eq" in k} for e in history if "eval_energy_kwh" in e]
              for history in ranks]
    assert logged[0] == logged[1] and len(logged[0]) == 2
    for entry, record in zip(logged[0], validations):
        assert entry["eval_energy_j_per_token"] == pytest.approx(record.energy_j / (10 * SEQ_LEN), rel=1e-9)


if __name__ == "__main__":
    {"two_ranks": _two_ranks}[sys.argv[2]](sys.argv[1])
