"""A training that forks a child inside its second epoch (a user's ``os.fork`` in a callback or a
loop of their own) whose child leaves through the interpreter (``sys.exit(0)``), as the test of
``test_forked_child_exit.py`` runs it, one framework per process:

    python tests/fork_child_runner.py <core|lightning|keras|hf> <out_dir>

The child's exit must write nothing into the parent's run, nor into the state a Keras resume goes on from. ``core`` also forks while another
thread holds the watch's lock, which the child's exit handler takes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

FRAMEWORK, OUT = sys.argv[1], Path(sys.argv[2])
os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for hf_tiny

from greencallbacks.sensors.base import Kind  # noqa: E402
from tests.fakes.scripted import ScriptedSensor  # noqa: E402

CHILD_EXIT_WAIT_S = 60.0  # a child whose exit hangs (a lock its parent's thread held at the fork)


def sensor() -> ScriptedSensor:
    return ScriptedSensor("device", time.monotonic, power_w=50.0, kind=Kind.GPU)


def fork_a_child_that_exits_normally(hold_the_watch_lock: bool = False) -> None:
    """The child leaves through the interpreter, as a script's ``sys.exit`` does: the exception
    unwinds the framework's call in the child and the interpreter's exit handlers run there."""
    from greencallbacks import watch

    held = watch._lock if hold_the_watch_lock else None
    if held is not None:
        held.acquire()  # as the parent's watch thread holds it for a moment at every look
    pid = os.fork()
    if pid == 0:
        sys.exit(0)
    if held is not None:
        held.release()
    deadline = time.monotonic() + CHILD_EXIT_WAIT_S
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            raise RuntimeError("the forked child's exit hung")
        time.sleep(0.01)


def core() -> None:
    from greencallbacks import Carbon, Meter, Tracker

    with Tracker(carbon=Carbon(intensity=300.0), output_dir=OUT).start(Meter([sensor()])) as tracker:
        for epoch in range(3):
            with tracker.phase("train", epoch):
                time.sleep(0.01)
                if epoch == 1:
                    fork_a_child_that_exits_normally(hold_the_watch_lock=True)


def lightning() -> None:
    import lightning.pytorch as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from greencallbacks.lightning import EnergyCallback

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), 0.1)

    class Forker(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                fork_a_child_that_exits_normally()

    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=8)
    trainer = L.Trainer(max_epochs=3, callbacks=[EnergyCallback(intensity=300.0, sensors=[sensor()], output_dir=OUT),
                                                 Forker()],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(Model(), data)


def keras() -> None:
    import keras as K
    import numpy as np

    from greencallbacks.keras import EnergyCallback

    state = OUT / "energy-state.json"  # what a resume (BackupAndRestore) goes on from

    class Forker(K.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                # The parent's write of this epoch's state is queued on a thread: taken as landed
                # once the file says this epoch (bounded), so that any change after is the child's.
                deadline = time.monotonic() + CHILD_EXIT_WAIT_S
                while not (state.exists() and json.loads(state.read_text()).get("last_train_epoch") == epoch):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{state} never said epoch {epoch}")
                    time.sleep(0.01)
                before = state.read_bytes()
                fork_a_child_that_exits_normally()
                if state.read_bytes() != before:  # the child's exit wrote the run up as failed in this epoch
                    raise RuntimeError(f"the forked child rewrote {state}")

    rng = np.random.default_rng(0)
    model = K.Sequential([K.Input((8,)), K.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(rng.random((64, 8), dtype=np.float32), rng.random((64, 1), dtype=np.float32), epochs=3,
              batch_size=32, verbose=0,
              callbacks=[EnergyCallback(sensors=[sensor()], intensity=300.0, output_dir=OUT), Forker()])


def hf() -> None:
    from hf_tiny import TokenDataset, tiny_model, training_args
    from transformers import Trainer, TrainerCallback

    from greencallbacks.hf import EnergyCallback

    class Forker(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if round(state.epoch) == 1:
                fork_a_child_that_exits_normally()

    trainer = Trainer(model=tiny_model(), args=training_args(OUT, num_train_epochs=3, eval_strategy="no"),
                      train_dataset=TokenDataset(16), callbacks=[EnergyCallback(intensity=300.0, sensors=[sensor()]),
                                                                  Forker()])
    trainer.train()


if __name__ == "__main__":
    {"core": core, "lightning": lightning, "keras": keras, "hf": hf}[FRAMEWORK]()
