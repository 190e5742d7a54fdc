"""A phase being measured: the intervals the tracker has billed to it so far, and how they add up.

``OpenPhase`` sums each component's energy and uncertainty over the phase's intervals (a model's
bias adds linearly, a counter's error in quadrature) and keeps the intervals as segments cut at
the heartbeats' marks (``priced_apart``), so that each part is priced at its own intensity when the
phase's record is built (``Tracker._local_record``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greencallbacks.meter import Measurement

# Methods whose error is a bias, the same in every window (a TDP model, a MIG share): a phase's
# segments add it linearly, where a counter's errors at its segments' boundaries add in quadrature.
# A phase cut into n segments (a checkpoint every step) said 50 %/sqrt(n) for a +-50 % estimate.
_BIASED = ("estimated", "apportioned")


def component_uncertainty_j(slot: dict) -> float:
    return slot.get("bias_j", 0.0) + math.sqrt(slot["uncertainty_j2"])


@dataclass
class OpenPhase:
    """A phase being measured: the sum of the intervals billed to it so far."""

    phase: str
    epoch: int | None
    seq: int
    metric_prefix: str | None = None
    start_unix: float | None = None
    duration_s: float = 0.0
    samples: int = 0
    samples_counted: bool = True
    tokens: int = 0
    tokens_counted: bool = True  # False: some batch's token count failed (see Tracker.add_samples)
    paused_s: float = 0.0
    components: dict[str, dict] = field(default_factory=dict)
    segments: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, joules)

    def add(self, measurement: "Measurement", end_unix: float, marks: list[tuple[float, float]] | None = None) -> None:
        """Bill ``measurement`` (ending at ``end_unix``) to this phase; ``marks``: see ``priced_apart``."""
        if self.start_unix is None:
            self.start_unix = measurement.start_unix
        self.duration_s += measurement.duration_s
        for c in measurement.components:
            slot = self.components.setdefault(
                c.name, {"name": c.name, "kind": c.kind, "energy_j": 0.0, "uncertainty_j2": 0.0, "bias_j": 0.0}
            )
            slot["energy_j"] += c.energy_j
            if c.method in _BIASED:  # the same model's error in every segment: it adds up
                slot["bias_j"] += c.uncertainty_j
            else:  # a counter's or sampled power's, at each segment's boundaries
                slot["uncertainty_j2"] += c.uncertainty_j * c.uncertainty_j  # inf, never OverflowError as ** raises
            slot["method"] = c.method
            slot["note"] = c.note
            slot["source"] = c.source
        # A segment never ends before it begins: priced over [t0, t1], which a carbon source refuses
        # the other way round, one bad stamp lost the whole phase's record. (The meter's stamps never
        # go backwards; a meter of the user's, or a future one, must not undo that here.)
        t0 = measurement.start_unix
        self.segments += priced_apart(t0, max(t0, end_unix), measurement.energy_j, marks or [])

    @property
    def empty(self) -> bool:
        return self.start_unix is None or (self.duration_s == 0 and not self.samples)


def priced_apart(t0: float, t1: float, energy_j: float, marks: list[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """The interval [t0, t1] of ``energy_j`` as segments (t0, t1, joules) cut at its ``marks``:
    (unix time, joules since t0) read at the heartbeats inside it.

    Each segment is priced at its own interval's intensity, so an epoch of hours with no boundary
    inside is priced at the energy-weighted intensity to a heartbeat's resolution: priced at the
    interval's time-weighted mean, a data stall (30 W) while the grid turned clean billed 1.14 g
    where 3.5 g were emitted. The joules are the interval's: a mark only splits them (a peek read
    ahead of the boundary's exact read is held within it)."""
    segments, done = [], 0.0
    for unix_s, joules in marks:
        if t0 < unix_s < t1:
            joules = min(max(joules, done), energy_j)
            segments.append((t0, unix_s, joules - done))
            t0, done = unix_s, joules
    segments.append((t0, t1, energy_j - done))
    return segments
