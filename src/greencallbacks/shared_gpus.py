"""A physical GPU that several ranks measure, billed once over them.

Ranks on one GPU (two DDP ranks given one device, processes sharing GPU 0) each read the whole
GPU's counter. At start the tracker gathers every rank's GPUs (``gpus_of``: each GPU sensor's UUID
and share); where one GPU's shares add up to more than the whole, each rank bills its share
scaled (``split_shared``), in every measurement it takes (``split_measurement``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greencallbacks.meter import Measurement, Meter
    from greencallbacks.tracker import Tracker


def split_shared(tracker: "Tracker", per_rank: list[list[tuple[str, str, float]]]) -> None:
    """Bill each physical GPU once over the ranks. Ranks on one GPU (two DDP ranks given one
    device, processes sharing GPU 0) each read the whole GPU's counter: summed, the run counted
    that GPU's energy once per rank. Where the ranks' shares of a GPU (1 each, a MIG
    instance's fraction) add up to more than the whole, each rank bills its share scaled so
    that they add up to 1: two ranks on one GPU bill half of it each, in their own records
    too (a failed run's unsummed ones). Said once, by rank 0, and in the summary
    (``tracker.gpus_shared``; ``tracker._gpu_split``: this rank's factor and note by sensor name)."""
    holders: dict[str, list[tuple[int, str, float]]] = {}
    for rank, gpus in enumerate(per_rank):
        for name, gpu_uuid, share in gpus:
            holders.setdefault(gpu_uuid, []).append((rank, name, share))
    for gpu_uuid, held in holders.items():
        ranks = sorted({rank for rank, _, _ in held})
        total = sum(share for _, _, share in held)
        if len(ranks) < 2 or total <= 1.0 + 1e-9:  # its own GPU, or MIG instances' shares of one
            continue
        factor = 1.0 / total
        note = (f"{gpu_uuid} is measured by ranks {', '.join(map(str, ranks))}: each bills its share of the whole "
                f"GPU's energy, {factor:.4g} of what it reads here")
        tracker.gpus_shared.append({"uuid": gpu_uuid, "ranks": ranks, "scaled_by": factor})
        for rank, name, _ in held:
            if rank == tracker.reducer.rank:
                tracker._gpu_split[name] = (factor, note)
    if tracker.gpus_shared and tracker.reducer.rank == 0:
        from greencallbacks.meter import warn

        shared = "; ".join(f"{g['uuid']} by ranks {', '.join(map(str, g['ranks']))}" for g in tracker.gpus_shared)
        warn(f"greencallbacks: several ranks measure the same GPU ({shared}): each reads the whole GPU's energy, "
             "so it is billed once over them, each rank its share (labelled in the records and the summary). "
             "Usual causes: ranks given one CUDA device, or CUDA_VISIBLE_DEVICES the same for every rank.")


def gpus_of(meter: "Meter") -> list[tuple[str, str, float]]:
    """(name, UUID, share billed) of each sensor of a physical GPU (NVML's, amdsmi's; a MIG
    instance's names its parent GPU, with its share). A sensor of the user's own names no GPU."""
    from greencallbacks.sensors.gpu import GpuSensor

    gpus = []
    for sensor in meter.sensors:
        device = getattr(sensor, "device", sensor)  # an Apportioned share of one
        if isinstance(device, GpuSensor) and isinstance(sensor.scope, str) and sensor.scope:
            gpus.append((sensor.name, sensor.scope, float(getattr(sensor, "share", 1.0))))
    return gpus


def split_measurement(measurement: "Measurement", split: dict[str, tuple[float, str]]) -> "Measurement":
    """``measurement`` with the components of ``split`` scaled by its factor and labelled."""
    components = tuple(
        dataclasses.replace(c, energy_j=c.energy_j * split[c.name][0], uncertainty_j=c.uncertainty_j * split[c.name][0],
                            note="; ".join(filter(None, [c.note, split[c.name][1]])))
        if c.name in split else c
        for c in measurement.components
    )
    return dataclasses.replace(measurement, components=components)
