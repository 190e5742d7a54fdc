"""Helpers shared by the benchmark scripts: statistics, machine description, subprocess runs.

Imports nothing heavy: every framework is imported inside the script that measures it, in a
fresh process, so one framework's import never pollutes another's figures.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULT_MARK = "@@BENCH-RESULT@@ "  # prefix of the one stdout line a child script returns its JSON on


def pin_threads(threads: int = 1) -> None:
    """One compute thread per library: small CPU steps are then stable enough to compare."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process
        pass


def quiet() -> None:
    """Silence the warnings and log lines that would drown the table (they cost the same in A and B)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "codecarbon", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def bootstrap_median_ci(values: list[float], level: float = 0.95, resamples: int = 4000) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (seeded: the same data give the same interval)."""
    import random

    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return medians[int(tail * resamples)], medians[min(resamples - 1, int((1 - tail) * resamples))]


def ratio_summary(with_s: list[float], without_s: list[float]) -> dict:
    """Median of the per-pair ratios (with / without), its 95 % bootstrap interval, and the data."""
    ratios = [w / wo for w, wo in zip(with_s, without_s)]
    low, high = bootstrap_median_ci(ratios)
    return {
        "ratio_median": statistics.median(ratios),
        "ratio_ci95": [low, high],
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "pairs": len(ratios),
        "ratios": ratios,
        "with_s_median": statistics.median(with_s),
        "without_s_median": statistics.median(without_s),
    }


def emit(result: dict) -> None:
    """Hand a child script's result to ``run_all`` (and print it for a human)."""
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)


def run_child(script: str, args: list[str], env: dict | None = None, timeout: float = 900) -> dict:
    """Run ``benchmarks/<script>`` in a fresh interpreter and return the JSON it emitted."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / script), *args],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
        cwd=str(REPO_ROOT),
    )
    elapsed = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result.setdefault("wall_s", elapsed)
            return result
    tail = (proc.stderr or proc.stdout)[-3000:]
    return {"error": f"{script} {' '.join(args)} exited {proc.returncode} without a result", "stderr_tail": tail}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    packages = [
        "greencallbacks", "torch", "lightning", "pytorch-lightning", "keras", "transformers", "accelerate",
        "codecarbon", "zeus", "psutil", "nvidia-ml-py",
    ]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in packages},
        "rapl_readable": _rapl_readable(),
    }


def _rapl_readable() -> bool:
    root = Path("/sys/class/powercap")
    try:
        for zone in root.glob("intel-rapl:*"):
            (zone / "energy_uj").read_text()
            return True
    except OSError:
        return False
    return False


def simulated_nvml(power_w: float = 300.0, latency: bool = True):
    """A simulated NVIDIA GPU on the real clock: the tests' fake ``pynvml`` (a counter stepping
    every 100 ms, instantaneous power), each energy-counter read sleeping the latency measured on
    an H100 (2.9 ms median, 15 ms p99). Returns ``(pynvml-like module, the GPU)``; the GPU's
    ``set_power`` changes its load and ``energy_between_j`` is the exact energy to compare with."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fakes.fake_pynvml import FakeNvml, gpu_uuid, h100_counter_latency

    nvml = FakeNvml(time.monotonic, counter_latency=h100_counter_latency() if latency else None, sleep=time.sleep)
    gpu = nvml.add_gpu(gpu_uuid(0), power_w=power_w)
    nvml.nvmlInit()
    return nvml, gpu


def simulated_gpu_sensor(nvml, gpu):
    from greencallbacks.sensors.nvml import NvmlGpuSensor

    return NvmlGpuSensor(gpu.handle, index=0, pynvml=nvml)


def mlp_module(validation: bool = True):
    """The benchmark MLP (``overhead._mlp``) as a LightningModule class: a cross-entropy training
    step and SGD, and with ``validation`` a validation step that logs ``val_loss``. Lightning is
    imported here, on first call, to keep this module light."""
    import lightning.pytorch as L
    import torch

    import overhead

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = overhead._mlp()

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    if not validation:
        return Module

    class ValidatedModule(Module):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    return ValidatedModule


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
