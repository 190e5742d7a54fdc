"""The HF Trainer on two CPU ranks under torchrun (gloo), logging at every step to W&B (offline),
MLflow (file store) and TensorBoard (run by test_distributed_four_loggers).

Usage: torchrun --nproc_per_node=2 distributed_four_loggers_hf_script.py OUT_DIR MODE [CHECKPOINT].
The fit: 30 samples in batches of 4 a rank (Accelerate pads the last to keep the ranks in step: 32
a epoch, 4 steps), 4 epochs, evaluation at every epoch's end, checkpoints every 2 steps. MODE
``<how>-<who>``: ``how`` ``raise`` (an exception) or ``kill`` (SIGKILL) at the end of step 11,
before its values are logged and after the checkpoint of step 10 (inside epoch 2), on ``who``:
``rank1`` alone or ``both``. ``resume``: the fit resumed from CHECKPOINT, then ``evaluate()``.
W&B writes under ``wandb-<MODE>``, MLflow to the experiment ``<MODE>`` of ``mlruns``, TensorBoard
under ``tb-<MODE>``; rank 0 writes ``<MODE>.json`` (its ``log_history`` and the run id) as it ends.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from inspect import signature
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from greencallbacks.hf import EnergyCallback  # noqa: E402
from tests.hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, scripted_sensor, tiny_model, training_args  # noqa: E402

FAIL_AT_STEP = 11


class FailsAtStep(TrainerCallback):
    def __init__(self, how: str) -> None:
        self.how = how

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == FAIL_AT_STEP:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rank {dist.get_rank()} fails in training")


def main(out: str, mode: str, checkpoint: str | None) -> None:
    if checkpoint:  # see tests/hf_tiny.py: transformers 4.47 restores the optimizer onto "cpu:0"
        load = torch.load
        torch.load = lambda *a, map_location=None, **k: load(*a, map_location="cpu" if map_location is not None else None, **k)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out, f"tb-{mode}"))  # transformers 5; 4.x: logging_dir
    os.environ["WANDB_DIR"] = str(Path(out, f"wandb-{mode}"))
    Path(out, f"wandb-{mode}").mkdir(exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"file:{Path(out, 'mlruns')}"
    os.environ["MLFLOW_EXPERIMENT_NAME"] = mode
    how, _, who = mode.partition("-")
    rank = int(os.environ["RANK"])
    energy = EnergyCallback(intensity=400.0, sensors=[scripted_sensor(f"device{rank}")])
    extra = {"logging_dir": str(Path(out, f"tb-{mode}"))} if "logging_dir" in signature(TrainingArguments).parameters else {}
    args = training_args(out, num_train_epochs=4, per_device_train_batch_size=4, logging_strategy="steps",
                         logging_steps=1, save_strategy="steps", save_steps=2,
                         report_to=["wandb", "mlflow", "tensorboard"], **extra)
    failing = how in ("raise", "kill") and (who == "both" or rank == 1)
    # The failure first: step 11's values are never logged.
    callbacks = ([FailsAtStep(how)] if failing else []) + [energy]
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES),
                      eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=callbacks)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        trainer.evaluate()
    finally:
        if rank == 0:
            Path(out, f"{mode}.json").write_text(json.dumps({"log_history": trainer.state.log_history,
                                                             "run_id": energy.tracker.run_id}))
            import mlflow
            import wandb

            wandb.finish()
            mlflow.end_run()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
