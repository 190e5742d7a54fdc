"""What differs between Keras backends: the devices a process trains on, and how ranks are summed.

* torch: the CUDA device Keras uses, synchronised at boundaries; ``torch.distributed`` ranks
  (DDP under Keras) are summed with the core ``TorchReducer``.
* jax: local GPUs (no sync function: Keras has already waited for the step's results when it
  converts the logs to floats); several processes (``jax.distributed``) are summed with ``JaxProcessReducer``.
  Untested here (jax is not installed in this project's CI); written against the public
  ``jax.process_index`` / ``process_count`` / ``multihost_utils.process_allgather``.
* tensorflow: the GPUs TensorFlow sees; one process. A multi-worker ``tf.distribute`` job is not
  summed across workers (each worker records its own energy; a warning says so).

Every backend module is imported only when Keras runs on that backend, where Keras has already
imported it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

from greencallbacks.distributed import LocalReducer, Reducer, place_on_hosts
from greencallbacks.meter import warn


def keras_version(version: str) -> tuple[int, int]:
    """(major, minor) of a Keras version string; a string that does not start with them (a build of
    unknown origin) counts as the newest Keras, whose behaviour this module is written against."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (10**6, 0)


def hooks_report_last_step(version: tuple[int, int]) -> bool:
    """Does Keras call the batch hooks of an execution of k steps (``steps_per_execution=k``) with
    its last step, first + k - 1 (Keras 3.11+, keras-team/keras#21422), or with its first (before)?"""
    return version >= (3, 11)


def epochs_run_on_in_passes(version: tuple[int, int]) -> bool:
    """Does each epoch of a ``fit(steps_per_epoch=...)`` over arrays begin where the last one stopped
    in the pass over them (the first at its start), and end at the pass's end, its short last batch?
    Keras 3.15 on torch, TensorFlow and JAX (run). Keras 3.3 on torch begins the first at the pass's
    second batch (its symbolic build took the first); the versions between are not checked."""
    return version >= (3, 15)


def may_run_past_the_data(backend: str, version: tuple[int, int], per_execution: int, eager: bool) -> bool:
    """Can Keras's compiled step update the model's variables for a step that had no data?

    On TensorFlow a compiled ``train_function`` / ``test_function`` that runs out of data raises
    from inside the graph, and the ops that do not wait for the data (a loss tracker's count
    grown by a static batch size, or by 1 in a custom step; the optimizer's step) may already
    have run: 10 batches of one sample counted 11 (Keras 3.3.3, 4 steps per execution) or 12
    (Keras 3.15.1, 5 batches of 2 of a data set of unknown length). It fetches its data that way
    for ``steps_per_execution=1`` in every release up to 3.15 (keras-team/keras#23179 fixed it
    after 3.15.1, in no release known here) and for several steps per execution before 3.7,
    which then always ends a loop whose batches do not fill the last execution so. Run eagerly,
    the fetch raises before any update. Read in the sources of Keras 3.3.3, 3.7 and 3.15.1.
    """
    return backend == "tensorflow" and not eager and (per_execution == 1 or version < (3, 7))


def logs_sum_metrics_over_replicas(version: tuple[int, int]) -> bool:
    """Does a metric's value in Keras's ``logs`` hold its sum over a ``tf.distribute`` strategy's replicas?

    Since 3.10 (keras-team/keras#21072) a metric's variables sum their replicas on read. Before 3.7
    each replica adds to its own copy and the logs hold the first replica's: a ``Sum`` of 306 labels
    on two replicas logged 153 (Keras 3.3.3). Keras 3.7 to 3.9 mirror the copies on write with a
    sum: it logged 1362 (Keras 3.8.0). The loss tracker's count is read apart (``count_value``).
    """
    return version >= (3, 10)


def count_value(variable: Any, strategy: Any) -> float | None:
    """A metric's count variable as one number: its sum over a ``tf.distribute`` strategy's
    replicas; None where this Keras keeps no such sum.

    Keras before 3.7 (keras-team/keras#20541) creates its TensorFlow variables without the
    metric's ``aggregation="sum"``: under a ``MirroredStrategy`` each replica adds its own
    batches to its own copy (``VariableAggregation.NONE``) and a plain read gives the first
    replica's (77 of 155 samples on two replicas): summed here. Keras 3.7 to 3.9 mirror it on
    write with a sum, which gave 16363 for 155 samples: None. Since 3.10 (keras-team/keras#21072)
    a metric's variable sums its replicas on read. Any variable on one replica reads as it is.
    """
    value = getattr(variable, "value", None)
    local_results = getattr(strategy, "experimental_local_results", None)
    parts = local_results(value) if local_results is not None and hasattr(value, "aggregation") else ()
    if len(parts) > 1:
        if getattr(value.aggregation, "name", None) == "NONE":
            return float(sum(float(part) for part in parts))
        if getattr(getattr(value, "synchronization", None), "name", None) != "ON_READ":
            return None
    import keras

    return float(keras.ops.convert_to_numpy(variable))


def devices_and_sync(backend: str) -> tuple[list[int] | None, Callable[[], None] | None]:
    """The CUDA indices this process trains on, and a function that waits for its queued work."""
    if backend == "torch":
        import torch

        from greencallbacks.torch_support import device_and_sync

        return device_and_sync("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")  # visible GPUs; TF numbers them like CUDA
        # [] (training on the CPU: no GPU billed), never None, which bills every GPU NVML sees: a
        # CPU-only TensorFlow wheel on a GPU host was billed all eight of its GPUs.
        return list(range(len(gpus))), None
    if backend == "jax":
        import jax

        gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
        indices = [_cuda_index(d) for d in gpus]
        # No sync: Keras turns the epoch's logs into Python floats before the hooks run, which waits.
        return indices, None  # [] on the CPU (jax without its CUDA plugin), as for TensorFlow
    return None, None


def _cuda_index(device: Any) -> int:
    """A JAX GPU's CUDA index in this process: ``local_hardware_id`` (None on old jax or where
    unknown, then the device id). Tested against None, not truthiness: 0 is a valid local id, and
    with several processes the global ``id`` of that device is another number."""
    local_id = getattr(device, "local_hardware_id", None)
    return int(local_id if local_id is not None else device.id)


def reducer_for(backend: str) -> Reducer:
    """Sums records over the processes of one job, so host sensors count once and every rank logs the total.

    A collective where several processes run: every process calls it at the same point (the
    first training epoch, or the start of ``evaluate`` / ``predict``).
    """
    if backend == "torch":
        from greencallbacks.distributed import torch_reducer_or_local

        return torch_reducer_or_local()
    if backend == "jax":
        import jax

        if jax.process_count() > 1:
            return JaxProcessReducer()
    if backend == "tensorflow" and _tf_config_workers() > 1:
        warn(
            "greencallbacks: multi-worker tf.distribute is not summed across workers; each worker records "
            "only its own devices. Give each worker its own output_dir, or sum the records afterwards."
        )
    return LocalReducer()


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except (ValueError, AttributeError):
        return 1
    return sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker"))


class JaxProcessReducer:
    """JAX multi-process (``jax.distributed.initialize``): every process runs the same callbacks.

    Objects travel as JSON bytes through ``process_allgather`` (sizes first, then padded bytes),
    so no process needs more than the public multihost utilities. The first process of each host
    measures CPU and RAM; each process measures its own local GPUs.
    """

    def __init__(self) -> None:
        import jax

        self.rank = jax.process_index()
        self.world_size = jax.process_count()
        place_on_hosts(self)

    def all_gather(self, obj: Any) -> list[Any]:
        import numpy as np
        from jax.experimental import multihost_utils

        payload = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)
        sizes = np.asarray(multihost_utils.process_allgather(np.array([payload.size], dtype=np.int32))).reshape(-1)
        padded = np.zeros(int(sizes.max()), dtype=np.uint8)
        padded[: payload.size] = payload
        gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(self.world_size, -1)
        return [json.loads(gathered[i, : sizes[i]].tobytes().decode("utf-8")) for i in range(self.world_size)]

    def gather_floats(self, values: tuple[float, ...]) -> list[tuple[float, ...]]:
        # As JSON: an array would travel as float32 unless JAX runs with x64 enabled.
        return [tuple(gathered) for gathered in self.all_gather(list(values))]
