"""A tiny HF model and synthetic data for the Trainer adapter tests (no downloads).

Run as a script under torchrun it trains on two CPU ranks (gloo) and writes each rank's
``log_history`` to ``<out>/log_history.rank{r}.json`` (used by ``test_hf_distributed.py``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

TRAIN_SAMPLES, EVAL_SAMPLES, TEST_SAMPLES = 30, 10, 12  # 30 / batch 8: a partial last batch
BATCH, SEQ_LEN, VOCAB = 8, 8, 64
POWER_W = 50.0  # the scripted sensor's constant power


class TokenDataset(torch.utils.data.Dataset):
    """Random token ids with labels; ``fail_after`` makes item access raise (a broken data source)."""

    def __init__(self, n: int, seed: int = 0, fail_after: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB, (n, SEQ_LEN), generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)
        self.fail_after = fail_after
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise RuntimeError("broken data source")
        mask = torch.ones(SEQ_LEN, dtype=torch.long)
        return {"input_ids": self.input_ids[i], "attention_mask": mask, "labels": self.labels[i]}


def tiny_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=SEQ_LEN,
    )
    return BertForSequenceClassification(config)


def training_args(output_dir, **overrides):
    from transformers import TrainingArguments

    settings = dict(
        output_dir=str(output_dir), num_train_epochs=2, per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        report_to="none", logging_strategy="epoch", eval_strategy="epoch", save_strategy="no", seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def tensorboard_dir(monkeypatch, directory) -> dict:
    """Send HF's TensorBoard logs to ``directory``: transformers 5 reads ``TENSORBOARD_LOGGING_DIR``,
    4.x the ``logging_dir`` training argument (gone in 5). Returns the arguments to add."""
    import inspect

    from transformers import TrainingArguments

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(directory))
    if "logging_dir" in inspect.signature(TrainingArguments).parameters:
        return {"logging_dir": str(directory)}
    return {}


def scripted_sensor(name: str = "device", power_w: float = POWER_W):
    """A constant-power sensor on the real clock: energy = power x real elapsed time, exactly."""
    from greencallbacks.sensors.base import Kind
    from tests.fakes.scripted import ScriptedSensor

    return ScriptedSensor(name, time.monotonic, power_w=power_w, kind=Kind.GPU)


def _train_on_two_ranks(output_dir: str) -> None:
    import resource

    import torch.distributed as dist
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback

    def cpu_seconds() -> float:
        own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime

    class CpuWindow(TrainerCallback):
        """This rank's CPU time while the energy callback measures; rank 1 also burns 0.5 CPU-s per
        epoch, which the host's estimate (on rank 0, torchrun's sibling) must take in."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = cpu_seconds()

        def on_epoch_begin(self, args, state, control, **kwargs):
            if dist.get_rank() == 1:
                until = time.process_time() + 0.5
                while time.process_time() < until:
                    pass

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = cpu_seconds() - self.start

    # Real discovery (estimated CPU and RAM on the first rank of the host) plus one device per rank.
    callback, window = EnergyCallback(intensity=400.0, pue=1.5, extra_sensors=[scripted_sensor()]), CpuWindow()
    args = training_args(output_dir)
    trainer = Trainer(
        model=tiny_model(), args=args, train_dataset=TokenDataset(TRAIN_SAMPLES),
        eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[window, callback],
    )
    trainer.train()
    rank = dist.get_rank()
    out = {
        "world_size": dist.get_world_size(),
        "parallel_mode": str(args.parallel_mode),
        "log_history": trainer.state.log_history,
        "cpu_seconds_measured": window.seconds,
    }
    Path(output_dir, f"log_history.rank{rank}.json").write_text(json.dumps(out))
    # Leave together: a rank exiting while gloo still runs can abort ("terminate called ...").
    # (Once in ~30 CI runs a rank still aborted in the interpreter's teardown, from gloo workers
    # freeing our gathers' tensors there; greencallbacks.distributed now lets them finish first.)
    dist.barrier()
    dist.destroy_process_group()


def _killed_or_resumed(output_dir: str, mode: str) -> None:
    """Every rank kills itself outright (SIGKILL, as a preemption) at step 3, after the checkpoint
    of step 2 (``killed``); or the fit resumed from that checkpoint (``resumed``)."""
    import os
    import signal

    import torch.distributed as dist
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback

    class KilledAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    if mode == "resumed":
        # transformers 4.47 loads the optimizer onto args.device on several ranks: "cpu:0" here,
        # which torch 2.13 cannot restore ("don't know how to restore data location"); on GPUs it
        # is "cuda:<r>". The CPU is where it belongs.
        load = torch.load
        torch.load = lambda *a, map_location=None, **k: load(*a, map_location="cpu" if map_location is not None else None, **k)
    rank = int(os.environ["RANK"])
    # A device of its own on each rank, as a GPU each: the host's CPU and RAM are billed by rank 0 alone.
    energy = EnergyCallback(intensity=400.0, sensors=[scripted_sensor(f"device{rank}")])
    args = training_args(output_dir, num_train_epochs=1, eval_strategy="no", logging_strategy="no",
                         save_strategy="steps", save_steps=2)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=TokenDataset(128),
                      callbacks=[energy] + ([KilledAtStep()] if mode == "killed" else []))
    trainer.train(resume_from_checkpoint=mode == "resumed")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if len(sys.argv) > 2:
        _killed_or_resumed(sys.argv[1], sys.argv[2])
    else:
        _train_on_two_ranks(sys.argv[1])
