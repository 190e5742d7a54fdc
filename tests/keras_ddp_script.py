"""One rank of a two-process Keras job on the torch backend under ``torch.distributed`` (gloo), or,
with ``KERAS_DDP_BACKEND=jax`` in the environment, on JAX under ``jax.distributed`` (its CPU collectives
over gloo, the coordinator at MASTER_ADDR:MASTER_PORT).

Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python keras_ddp_script.py OUT_DIR [UPDATE_FREQ]
Each rank fits a tiny model on its half of the data (Keras does not sync gradients here: this
checks the energy bookkeeping across ranks, not data parallelism) and dumps its History. With
UPDATE_FREQ, rank 0 alone also logs to a ``keras.callbacks.TensorBoard`` in OUT_DIR/tb that logs
batches every UPDATE_FREQ (logging from one rank, as is usual).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

BACKEND = os.environ["KERAS_BACKEND"] = os.environ.get("KERAS_DDP_BACKEND", "torch")
if BACKEND == "jax":  # before Keras touches JAX: initialize must come before any computation
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
                               num_processes=int(os.environ["WORLD_SIZE"]), process_id=int(os.environ["RANK"]))
else:
    import torch.distributed as dist

import keras  # noqa: E402
import numpy as np  # noqa: E402

from greencallbacks.keras import EnergyCallback  # noqa: E402

PER_RANK = 48


def main(out_dir: Path, update_freq: int | None = None) -> None:
    if BACKEND != "jax":
        dist.init_process_group("gloo", init_method="env://")
    rank = int(os.environ["RANK"])
    rng = np.random.default_rng(rank)
    x, y = rng.random((PER_RANK, 8), dtype=np.float32), rng.random((PER_RANK, 1), dtype=np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    energy = EnergyCallback(output_dir=out_dir / "energy", intensity=300.0)  # real sensors, discovered per rank
    loggers = [keras.callbacks.TensorBoard(str(out_dir / "tb"), update_freq=update_freq)] if update_freq and rank == 0 else []
    history = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x[:20], y[:20]), callbacks=[energy, *loggers],
                        verbose=0)
    (out_dir / f"history-rank{rank}.json").write_text(json.dumps(history.history))
    if BACKEND == "jax":
        jax.distributed.shutdown()
        return
    # Leave together: under torch 2.2.2 rank 1 once waited forever in destroy_process_group after
    # rank 0 had gone (its fit and history done; seen with py-spy).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(arg) for arg in sys.argv[2:3]))
