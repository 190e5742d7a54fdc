"""A stated share of a device that this process shares with other work.

Some devices are measured only as a whole while a process uses part of one: a MIG instance of an
NVIDIA GPU (NVML reports energy for the physical GPU only), one die of a two-die AMD board such as
the MI250X (the board's energy is reported on one die). Billing the whole device to each process
that uses part of it counts it several times over; billing nothing loses it. ``Apportioned`` bills
``share x`` the device's energy, where the caller states the rule that gave the share.

Uncertainty, stated as a bound: the process's true part of the device's energy ``E`` lies
somewhere between none and all of it, so the billed ``share x E`` is off by at most
``max(share, 1 - share) x E``. The sensor carries that as a fraction of what it bills
(``relative_uncertainty``); the meter reports it next to the energy. It is large on purpose: the
rule assumes every part of the device draws power in proportion to its size, which holds when all
tenants are busy and fails when this process works while the others idle (or the reverse).
"""

from __future__ import annotations

from greencallbacks.sensors.base import Method, Sensor


def share_bound(share: float) -> float:
    """The relative uncertainty of billing ``share`` of a device (see the module docstring)."""
    return max(share, 1.0 - share) / share


def warn_once(said: set[tuple[str, float]], sensor: Apportioned, message: str) -> None:
    """Warn ``message`` the first time this process bills a device this share; ``said`` holds the
    (scope, share) pairs already warned of (one set per backend, so tests can reset it)."""
    key = (sensor.scope, sensor.share)
    if key in said:
        return
    said.add(key)
    from greencallbacks.meter import warn  # on first use: sensor modules load nothing beyond sensors.base

    warn(message)


class Apportioned(Sensor):
    """``share`` of ``device``'s energy, labelled ``apportioned``.

    Args:
        device: the sensor of the whole device (it keeps its own counter, sampling and wrap
            tracking; this only scales what it reads).
        share: the fraction billed to this process, in (0, 1].
        rule: how the share was obtained, in words for the records, e.g.
            ``"MIG instance: 2 of the GPU's 7 compute slices"``.
    """

    method = Method.APPORTIONED

    def __init__(self, device: Sensor, share: float, rule: str) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self.device = device
        self.share = float(share)
        self.rule = rule
        self.name = device.name
        self.kind = device.kind
        self.scope = device.scope
        self.poll_interval_s = device.poll_interval_s
        # The meter widens a sampled sensor's boundary error to its poll interval by method; this
        # one's method is "apportioned", so carry that width in the update period instead.
        sampled_width = (device.poll_interval_s or 0.0) if device.method == Method.SAMPLED else 0.0
        self.update_period_s = max(device.update_period_s, sampled_width)
        self.off_thread = getattr(device, "off_thread", False)
        self.samples_when_read = getattr(device, "samples_when_read", False)
        self.model = getattr(device, "model", "")
        self.index = getattr(device, "index", None)
        self.relative_uncertainty = share_bound(self.share)
        self.measured_by = str(device.method)
        self.source = getattr(device, "source", "") or ""
        words = {"counter": "its energy counter", "sampled": "integrated power samples"}
        measured = words.get(self.measured_by, self.measured_by)
        notes = [f"billed {self.share:.4g} of the whole device, measured by {measured} ({rule})"]
        if device.note:
            notes.append(device.note)
        self.note = "; ".join(notes)

    def energy_j(self) -> float:
        return self.share * self.device.energy_j()

    def poll(self) -> float | None:
        device_j = self.device.poll()
        return None if device_j is None else self.share * device_j

    def power_now_w(self) -> float | None:
        power = self.device.power_now_w() if hasattr(self.device, "power_now_w") else None
        return None if power is None else self.share * power

    def close(self) -> None:
        self.device.close()

    def describe(self) -> dict:
        return {**self.device.describe(), "method": str(self.method), "share": self.share, "rule": self.rule}
