"""Two CPU ranks under Lightning's DDP (gloo) whose step values are a collective (run by
test_distributed_live).

Usage: python distributed_live_script.py OUT_DIR CONFIG_JSON. Lightning's ``ddp`` launcher starts
rank 1 by running this script again with LOCAL_RANK set. Each rank's scripted device draws 3600 W
on a fake clock that advances 1 s before the energy callback sees each training or validation
batch (and 5 s in each epoch's gap): 1 Wh a batch a rank, so every step value is exactly twice the
fake seconds a rank has run, plus what attempts before it spent.

CONFIG: ``name`` (the CSV logger's), ``trainer`` (Trainer arguments over the defaults below),
``manual`` (manual optimization of two optimizers), ``budget`` ([kwh, on_exceed]),
``step_metrics``, ``raise_at`` (rank 1 alone raises in a callback run before the energy
callback's, at the end of that global step's batch: it skips the collective rank 0 waits in),
``ckpt_every`` (checkpoints every N training steps, ``steps/step=N.ckpt``), ``resume`` (a
checkpoint's path). Each rank writes ``<name>.rank<r>.json``: every ``live_metrics`` call it made
(global step, fake seconds, the values), the floats gathered, where it ended, its run id.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # for tests.fakes


def spy(energy, step_now, seconds_now, live: list, gathered: list) -> None:
    """Record each step-values call of ``energy``'s session (step, fake seconds, values, whether the
    budget stops) and each gather of its reducer."""
    session, reducer = energy.session, energy.tracker.reducer
    live_metrics, gather_floats = session.live_metrics, getattr(reducer, "gather_floats", None)

    def spied_live(prefix=""):
        values = live_metrics(prefix)
        live.append({"step": step_now(), "seconds": seconds_now(), "values": values, "stops": session.budget_stops_training})
        return values

    def spied_gather(values):
        result = gather_floats(values)
        gathered.append(result)
        return result

    session.live_metrics = spied_live
    if gather_floats is not None:  # (before step values were summed over the ranks: none)
        reducer.gather_floats = spied_gather


def main(out: Path, config: dict) -> None:
    import lightning.pytorch as L
    import torch
    from lightning.fabric.strategies.launchers import subprocess_script
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from distributed_everyday_script import dataset
    from greencallbacks import Budget
    from greencallbacks.sensors.base import Kind
    from lightning_models import flavour, step_logging, trainer_kwargs
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    _, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    Model = step_logging(TinyModel)

    class TwoOptimizers(TinyModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.other = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x) + self.other(x), y)  # one backward: DDP's buckets
            optimizers = self.optimizers()
            for optimizer in optimizers:
                optimizer.zero_grad()
            self.manual_backward(loss)
            for optimizer in optimizers:  # global_step counts both: two a batch
                optimizer.step()
            self.log("step_loss", loss, on_step=True, on_epoch=False)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.layer.parameters(), lr=0.01), torch.optim.SGD(self.other.parameters(), lr=0.01)]

    subprocess_script._ChildProcessObserver.__init__.__defaults__ = (120,)  # see distributed_logged_script.py
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    clock = FakeClock()
    start = clock.now
    name = config["name"]

    class Tick(L.Callback):  # before the energy callback: its step values include this batch
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.advance(1.0)
            if trainer.global_rank == 1 and trainer.global_step == config.get("raise_at"):
                raise RuntimeError("rank 1 alone fails before the step values")

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            clock.advance(1.0)

    class Gap(L.Callback):  # after the energy callback's epoch end: in the gap
        def on_train_epoch_end(self, trainer, pl_module):
            clock.advance(5.0)

    live: list[dict] = []
    gathered: list[list] = []

    class Spy(L.Callback):
        def on_train_start(self, trainer, pl_module):
            spy(energy, lambda: trainer.global_step, lambda: clock.now - start, live, gathered)

    budget = Budget(kwh=config["budget"][0], on_exceed=config["budget"][1]) if config.get("budget") else None
    energy = EnergyCallback(output_dir=out / "energy", intensity=100.0, budget=budget,
                            step_metrics=config.get("step_metrics", True),
                            sensors=[ScriptedSensor(f"device{rank}", clock, power_w=3600.0, kind=Kind.GPU)])
    callbacks = [Tick(), energy, Gap(), Spy()]
    if config.get("ckpt_every"):
        callbacks.append(ModelCheckpoint(dirpath=out / "steps", every_n_train_steps=config["ckpt_every"],
                                         save_top_k=-1, filename="{step}"))
    settings = dict(devices=2, max_epochs=3, log_every_n_steps=1, num_sanity_val_steps=0,
                    enable_checkpointing=bool(config.get("ckpt_every")))
    trainer = L.Trainer(strategy="ddp", logger=L.loggers.CSVLogger(out / "csv", name=name), callbacks=callbacks,
                        **trainer_kwargs(**{**settings, **config.get("trainer", {})}))
    model = TwoOptimizers() if config.get("manual") else Model()
    try:
        trainer.fit(model, DataLoader(dataset(37, 0), batch_size=4), DataLoader(dataset(13, 1), batch_size=4),
                    ckpt_path=config.get("resume"))
    finally:
        dump = {"live": live, "gathered": gathered, "step": trainer.global_step, "epoch": trainer.current_epoch,
                "should_stop": bool(trainer.should_stop), "run_id": energy.tracker.run_id, "seconds": clock.now - start}
        (out / f"{name}.rank{rank}.json").write_text(json.dumps(dump))


def main_hf(out: Path, config: dict) -> None:
    """The HF Trainer under torchrun: the clock advances 1 s at each optimizer step and evaluation
    batch before the energy callback sees it (5 s in each epoch's gap). CONFIG: ``name``, ``args``
    (TrainingArguments over the defaults below), ``budget``, ``resume``. Rank r writes
    ``<name>.rank<r>.json``: its live calls, gathers, ``log_history`` and run id."""
    import torch.distributed as dist
    from transformers import Trainer, TrainerCallback

    from greencallbacks import Budget
    from greencallbacks.hf import EnergyCallback
    from greencallbacks.sensors.base import Kind
    from tests.fakes.scripted import FakeClock, ScriptedSensor
    from tests.hf_tiny import EVAL_SAMPLES, TRAIN_SAMPLES, TokenDataset, tiny_model, training_args

    if config.get("resume"):  # see tests/hf_tiny.py: transformers 4.47 restores the optimizer onto "cpu:0"
        import torch

        load = torch.load
        torch.load = lambda *a, map_location=None, **k: load(*a, map_location="cpu" if map_location is not None else None, **k)
    rank, name = int(os.environ["RANK"]), config["name"]
    clock = FakeClock()
    start = clock.now
    live: list[dict] = []
    gathered: list[list] = []

    class Tick(TrainerCallback):  # before the energy callback
        def on_step_end(self, args, state, control, **kwargs):
            clock.advance(1.0)
            if rank == 1 and state.global_step == config.get("raise_at"):
                raise RuntimeError("rank 1 alone fails before the step values")

        def on_prediction_step(self, args, state, control, **kwargs):
            clock.advance(1.0)

    class GapAndSpy(TrainerCallback):  # after it
        def on_train_begin(self, args, state, control, **kwargs):
            spy(energy, lambda: state.global_step, lambda: clock.now - start, live, gathered)

        def on_epoch_end(self, args, state, control, **kwargs):
            clock.advance(5.0)

    budget = Budget(kwh=config["budget"][0], on_exceed=config["budget"][1]) if config.get("budget") else None
    energy = EnergyCallback(intensity=100.0, budget=budget,
                            sensors=[ScriptedSensor(f"device{rank}", clock, power_w=3600.0, kind=Kind.GPU)])
    settings = dict(num_train_epochs=3, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                    logging_strategy="steps", logging_steps=1)
    settings.update(config.get("args", {}))
    trainer = Trainer(model=tiny_model(), args=training_args(out, **settings), train_dataset=TokenDataset(TRAIN_SAMPLES),
                      eval_dataset=TokenDataset(EVAL_SAMPLES, seed=1), callbacks=[Tick(), energy, GapAndSpy()])
    try:
        trainer.train(resume_from_checkpoint=config.get("resume"))
    finally:
        dump = {"live": live, "gathered": gathered, "step": trainer.state.global_step, "run_id": energy.tracker.run_id,
                "log_history": trainer.state.log_history, "seconds": clock.now - start}
        Path(out, f"{name}.rank{rank}.json").write_text(json.dumps(dump))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    (main_hf if "RANK" in os.environ else main)(Path(sys.argv[1]), json.loads(sys.argv[2]))
