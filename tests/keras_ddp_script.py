"""One rank of a two-process Keras job on the torch backend under ``torch.distributed`` (gloo).

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

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch.distributed as dist  # noqa: E402

from greencallbacks.keras import EnergyCallback  # noqa: E402

PER_RANK = 48


def main(out_dir: Path, update_freq: int | None = None) -> None:
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    rng = np.random.default_rng(rank)
    x, y = rng.random((PER_RANK, 8), dtype=np.float32), rng.random((PER_RANK, 1), dtype=np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    energy = EnergyCallback(output_dir=out_dir / "energy", intensity=300.0)  # real sensors, discovered per rank
    loggers = [keras.callbacks.TensorBoard(str(out_dir / "tb"), update_freq=update_freq)] if update_freq and rank == 0 else []
    history = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x[:20], y[:20]), callbacks=[energy, *loggers],
                        verbose=0)
    (out_dir / f"history-rank{rank}.json").write_text(json.dumps(history.history))
    # Leave together: under torch 2.2.2 rank 1 once waited forever in destroy_process_group after
    # rank 0 had gone (its fit and history done; seen with py-spy).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(arg) for arg in sys.argv[2:3]))
