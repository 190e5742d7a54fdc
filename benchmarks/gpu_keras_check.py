"""On a real NVIDIA GPU: the Keras callback (torch backend) against the NVML counter.

A reference callback reads nvmlDeviceGetTotalEnergyConsumption after torch.cuda.synchronize()
at the start and end of each epoch; the EnergyCallback's train records should agree on the GPU
component to within one counter step (100 ms x power).

Usage: KERAS_BACKEND=torch python benchmarks/gpu_keras_check.py [--epochs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import keras
    import numpy as np
    import pynvml
    import torch

    from greencallbacks.keras import EnergyCallback
    from greencallbacks.records import read_records

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())

    class NvmlReference(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_j = []

        def _read(self):
            torch.cuda.synchronize()
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0

        def on_epoch_begin(self, epoch, logs=None):
            self._start = self._read()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_j.append(self._read() - self._start)

    width = 8192
    model = keras.Sequential([keras.Input((width,)), *[keras.layers.Dense(width, activation="relu") for _ in range(4)],
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    batch = 1024
    x = np.random.default_rng(0).standard_normal((batch * args.steps, width), dtype=np.float32)
    y = np.zeros((batch * args.steps, 1), dtype=np.float32)
    out = tempfile.mkdtemp()
    reference = NvmlReference()
    history = model.fit(x, y, batch_size=batch, epochs=args.epochs, verbose=0,
                        callbacks=[EnergyCallback(output_dir=out, intensity=400), reference])
    records = [r for r in read_records(out) if r.phase == "train"]
    rows = []
    for record, ref_j in zip(records, reference.epoch_j):
        gpu_j = sum(c["energy_j"] for c in record.components if c["kind"] == "gpu")
        rows.append({"epoch": record.epoch, "seconds": record.duration_s, "callback_gpu_j": gpu_j,
                     "nvml_reference_j": ref_j, "diff_pct": 100 * (gpu_j / ref_j - 1) if ref_j else None,
                     "methods": {c["name"]: c["method"] for c in record.components},
                     "logged_energy_kwh": history.history["energy_kwh"][record.epoch]})
    result = {"gpu": pynvml.nvmlDeviceGetName(handle), "keras": keras.__version__, "backend": keras.backend.backend(),
              "epochs": rows}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as handle_out:
            handle_out.write(text)


if __name__ == "__main__":
    main()
