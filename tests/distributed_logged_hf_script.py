"""The HF Trainer on two CPU ranks under torchrun (gloo), logging at every step to TensorBoard
(run by test_distributed_logged_totals).

Usage: torchrun --nproc_per_node=2 distributed_logged_hf_script.py OUT_DIR MODE [CHECKPOINT]. The
fit: 30 samples in batches of 4 a rank (Accelerate pads the last to keep the ranks in step: 32 a
epoch, 4 steps), 3 epochs, evaluation at every epoch's end, checkpoints every 2 steps.
``killed``: every rank kills itself outright (SIGKILL, a preemption) at step 7, before its values
of that step are logged and after the checkpoint of step 6 (inside epoch 1); ``resumed``: the fit
resumed from CHECKPOINT. TensorBoard writes under ``tb-<MODE>``; rank 0 writes ``<MODE>.json``: its
``log_history`` and the run id.
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


class KilledAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            os.kill(os.getpid(), signal.SIGKILL)


def main(out: str, mode: str, checkpoint: str | None) -> None:
    if checkpoint:  # see tests/hf_tiny.py: transformers 4.47 restores the optimizer onto "cpu:0"
        load = torch.load
        torch.load = lambda *a, map_location=None, **k: load(*a, map_location="cpu" if map_location is not None else None, **k)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out, f"tb-{mode}"))  # transformers 5; 4.x: logging_dir
    rank = int(os.environ["RANK"])
    energy = EnergyCallback(intensity=400.0, sensors=[scripted_sensor(f"device{rank}")])
    extra = {"logging_dir": str(Path(out, f"tb-{mode}"))} if "logging_dir" in signature(TrainingArguments).parameters else {}
    args = training_args(out, num_train_epochs=3, per_device_train_batch_size=4, logging_strategy="steps",
                         logging_steps=1, save_strategy="steps", save_steps=2, report_to=["tensorboard"], **extra)
    # The killer first: step 7's values are never logged (they are after the checkpoint, lost with the kill).
    callbacks = ([KilledAtStep()] if mode == "killed" else []) + [energy]
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES),
                      eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=checkpoint)
    if rank == 0:
        Path(out, f"{mode}.json").write_text(json.dumps({"log_history": trainer.state.log_history,
                                                         "run_id": energy.tracker.run_id}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
