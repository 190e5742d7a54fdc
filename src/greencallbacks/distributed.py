"""Summing across ranks: the seam between the tracker and whatever runs the processes.

Each rank measures only its own devices; the first rank on each host also measures the host
(CPU, RAM; an estimate covers every rank's processes on the host), so nothing is counted twice. At the end of each phase the tracker gathers every
rank's local records and sums them, so all ranks log the same numbers.
"""

from __future__ import annotations

import atexit
import os
import socket
import time
from typing import Any, Protocol

# See `_let_gloo_workers_finish`.
GLOO_EXIT_GRACE_S = 0.05
_grace_registered = False


class Reducer(Protocol):
    rank: int
    world_size: int
    measures_host: bool  # this rank measures CPU and RAM for its host
    host_pids: list[int]  # the other ranks' processes on the host, when this rank measures it
    pids_on_host: list[int]  # every rank's process on this host, this one's included (where known)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank. A collective: all ranks call it."""

    def gather_floats(self, values: tuple[float, ...]) -> list[tuple[float, ...]]:
        """``all_gather`` of a few floats (as many on every rank), without pickling: for logging steps."""


class LocalReducer:
    """A single process."""

    rank = 0
    world_size = 1
    measures_host = True
    host_pids: list[int] = []
    pids_on_host: list[int] = []  # (this process alone)

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather_floats(self, values: tuple[float, ...]) -> list[tuple[float, ...]]:
        return [tuple(values)]


class TorchReducer:
    """``torch.distributed`` (DDP, FSDP, DeepSpeed, HF Accelerate all run on it).

    Objects travel over a gloo group, so NCCL jobs need no GPU buffers for them. Creating it is a
    collective: construct it on every rank at the same point (the adapters do it in setup).
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised; use LocalReducer")
        self._dist = dist
        self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        global _grace_registered
        if not _grace_registered:
            _grace_registered = True
            atexit.register(_let_gloo_workers_finish)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        place_on_hosts(self)

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def gather_floats(self, values: tuple[float, ...]) -> list[tuple[float, ...]]:
        # One collective of a float64 tensor: all_gather_object pickles and sends the sizes first
        # (about 4 times as long between two local processes).
        import torch

        mine = torch.tensor(values, dtype=torch.float64)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._dist.all_gather(out, mine, group=self._group)
        return [tuple(gathered.tolist()) for gathered in out]


def place_on_hosts(reducer: Any) -> None:
    """Set ``measures_host``, ``hosts`` and ``host_pids`` from every rank's host and process id.

    A collective. The first rank of each host measures it. Its CPU and RAM estimates cover its own
    process tree, so they also take in the other ranks' processes on the host: ranks that torchrun
    or a spawn started are siblings of it, not children, and would go unmeasured. A pid means the
    same process only within one kernel and pid namespace (containers sharing a host name).
    """
    ranks = reducer.all_gather([socket.gethostname(), _process_namespace(), os.getpid()])
    names = [name for name, _, _ in ranks]
    here, namespace = names[reducer.rank], ranks[reducer.rank][1]
    reducer.measures_host = names.index(here) == reducer.rank
    reducer.hosts = len(set(names))
    reducer.host_pids = [pid for name, ns, pid in ranks if name == here and ns == namespace and pid != os.getpid()
                         ] if reducer.measures_host and namespace else []
    # Every rank's process on this host (this one too): a GPU's other processes that are ranks of
    # this run are no other work (see session's GpuNeighbours).
    reducer.pids_on_host = [pid for name, ns, pid in ranks if name == here and ns == namespace
                            ] if namespace else [os.getpid()]


def _process_namespace() -> str:
    """This kernel's boot id and this process's pid namespace ("" where unknown: no pid shared)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _let_gloo_workers_finish() -> None:
    """At exit, give gloo's worker threads the GIL to let go of our gathers' tensors.

    A gloo worker frees a finished collective's tensors on its own thread, and freeing a tensor
    made in Python takes the GIL. When the interpreter is already finalizing, that thread is
    stopped inside a C++ destructor and the process aborts (SIGABRT, "terminate called without an
    active exception"), after the training has finished: a torch bug (gloo workers outliving the
    interpreter's exit handlers), which our gathers set off on a rank that exits right after its
    last one (Lightning ddp_spawn, torchrun ranks). Here, still inside the exit handlers, the
    workers can take the GIL while this thread sleeps: 2 spawned ranks gathering then exiting
    aborted in 16 of 38 runs without this and 0 of 33 with it.
    """
    time.sleep(GLOO_EXIT_GRACE_S)


def torch_reducer_or_local(world_size: int | None = None) -> Reducer:
    """The torch reducer when torch.distributed runs with several ranks, else a local one.

    ``world_size``: the ranks the framework says this training runs on. A process group can
    outlive the job that made it: after a DDP fit, a single-device Trainer on rank 0 alone
    (Lightning's advice for testing) trains on 1, and a collective there would wait for ranks
    that are not in it (until gloo's 30-minute timeout), or fail and leave it unmeasured.
    """
    import sys

    if world_size is not None and world_size <= 1:
        return LocalReducer()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchReducer()
    return LocalReducer()
