"""HF's ``include_num_input_tokens_seen`` count in the records where an epoch is cut short by
something no hook sees: a kill (the resume carries the open epoch from the heartbeat) and a crash
inside an evaluation on several ranks (written up at once, under the loop's phase).

Run as a script (``<out> killed``, or under torchrun ``<out> eval_crash``) it is the training that
these tests kill or crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "tests")]

from transformers import TrainerCallback  # noqa: E402

from greencallbacks.ledger import read_run_records  # noqa: E402
from tests.hf_tiny import BATCH, SEQ_LEN, TRAIN_SAMPLES, TokenDataset  # noqa: E402

pytestmark = pytest.mark.slow

KILL_STEP = 7  # inside epoch 1 (4 steps an epoch), after the checkpoint of epoch 0 (checkpoint-4)


class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == KILL_STEP:
            os.kill(os.getpid(), signal.SIGKILL)  # as a preemption: no handler runs


def _killed(out: str) -> None:
    """Trains with a heartbeat at every step (due at once), and is killed at ``KILL_STEP``."""
    import greencallbacks.checkpoint_state
    from test_hf_everyday import make_trainer, new_callback

    greencallbacks.checkpoint_state.HEARTBEAT_S = 0.0  # where the tracker reads it
    trainer = make_trainer(out, new_callback(), [KillAt()], save_strategy="epoch", eval_strategy="no",
                           include_num_input_tokens_seen="all")
    trainer.train()


def test_a_killed_attempt_s_open_epoch_is_carried_with_its_tokens(tmp_path):
    """Regression: HF's token count was added to an epoch at its end only, so the open epoch that
    a killed attempt's heartbeat (or checkpoint) held had none, and the resume carried it with
    ``tokens: null``. The tokens are now added at every step's end."""
    from test_hf_everyday import checked, make_trainer, new_callback

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run([sys.executable, __file__, str(out), "killed"], capture_output=True, text=True,
                            timeout=180, env=env, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    callback = new_callback()
    resumed = make_trainer(out, callback, save_strategy="epoch", eval_strategy="no", include_num_input_tokens_seen="all")
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    records = checked(resumed, callback, out, "killed, resumed")
    trained = [(r.attempt, r.epoch, r.samples, r.tokens, r.carried) for r in records if r.phase == "train"]
    killed_in_epoch_1 = (KILL_STEP - 4) * BATCH  # three whole batches of 8
    assert trained == [(0, 0, TRAIN_SAMPLES, TRAIN_SAMPLES * SEQ_LEN, False),
                       (0, 1, killed_in_epoch_1, killed_in_epoch_1 * SEQ_LEN, True),
                       (1, 1, TRAIN_SAMPLES, TRAIN_SAMPLES * SEQ_LEN, False)]


def _eval_crash(out: str) -> None:
    """Two CPU ranks evaluate every 2 steps; the first evaluation's data source breaks on both."""
    import torch.distributed as dist
    from transformers import Trainer

    from greencallbacks.hf import EnergyCallback
    from tests.hf_tiny import EVAL_SAMPLES, scripted_sensor, tiny_model, training_args

    rank = int(os.environ["RANK"])
    callback = EnergyCallback(intensity=300.0, sensors=[scripted_sensor(f"device{rank}")])
    args = training_args(out, eval_strategy="steps", eval_steps=2, include_num_input_tokens_seen="all")
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES),
                      eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1, fail_after=2), callbacks=[callback])
    try:
        trainer.train()
    except RuntimeError as error:
        assert "broken data source" in str(error)
    Path(out, f"tokens.rank{rank}.json").write_text(json.dumps(
        {"tokens": trainer.state.num_input_tokens_seen, "step": trainer.state.global_step, "run_id": callback.tracker.run_id}))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.distributed
def test_a_crash_inside_an_evaluation_on_two_ranks_keeps_the_epoch_s_tokens(tmp_path):
    """Regression: on several ranks an evaluation that raises fails the run at once (ending its
    phase is a collective), with the loop's phase innermost: the epoch's tokens, added at its end
    or to the innermost phase at a crash's write-up, were lost (``tokens: null``)."""
    from test_hf_distributed import torchrun

    done = torchrun(__file__, tmp_path, tmp_path, "eval_crash", PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    seen = [json.loads((tmp_path / f"tokens.rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1] and seen[0]["step"] == 2
    records = read_run_records(seen[0]["run_id"], [tmp_path])
    train = [r for r in records if r.phase == "train"]
    assert {(r.epoch, r.partial) for r in train} == {(0, True)}
    # Two steps of a batch of 8 on each rank: HF's count, already summed over the ranks.
    assert seen[0]["tokens"] == 2 * 2 * BATCH * SEQ_LEN
    assert sum(r.tokens or 0 for r in train) == seen[0]["tokens"]
    summary = json.loads((tmp_path / "energy-summary.json").read_text())  # the failed run's, summed over the ranks
    assert summary["ended"] == "failed" and summary["phases"]["train"]["tokens"] == seen[0]["tokens"]


@pytest.mark.distributed
def test_the_report_of_a_crash_on_two_ranks_has_the_tokens_of_hf_s_count(tmp_path):
    """Regression: at a crash on several ranks each rank writes its own part of the open epoch; HF's
    count, already summed over the ranks, is in rank 0's, and rank 1's ran batches with no tokens.
    The report took that for a count not whole: training tokens n/a for the run (``tokens_partial``),
    where its summary has 64."""
    import contextlib
    import io

    from greencallbacks.cli import main
    from test_hf_distributed import torchrun

    done = torchrun(__file__, tmp_path, tmp_path, "eval_crash", PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    seen = json.loads((tmp_path / "tokens.rank0.json").read_text())
    parts = [r for r in read_run_records(seen["run_id"], [tmp_path]) if r.phase == "train" and r.ranks == 1]
    parts.sort(key=lambda r: r.tokens or 0)
    assert [(r.samples, r.tokens) for r in parts] == [(2 * BATCH, None), (2 * BATCH, seen["tokens"])]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(tmp_path), "--format", "json"]) == 0
    [configuration] = json.loads(out.getvalue())["configurations"]
    train = configuration["phases"]["train"]
    assert (train["tokens"]["mean"], train["tokens_partial"]) == (seen["tokens"], False)
    assert configuration["run_totals"][seen["run_id"]]["train_tokens"] == seen["tokens"]


if __name__ == "__main__":
    {"killed": _killed, "eval_crash": _eval_crash}[sys.argv[2]](sys.argv[1])
