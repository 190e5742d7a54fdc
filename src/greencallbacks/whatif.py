"""What a recorded run would have emitted at another time or in another place.

Strategies after "Measuring the Carbon Intensity of AI in Cloud Instances" (FAccT 2022):

* as recorded: the run's energy at the times it was used, priced with the given series (not
  the records' own CO2eq, which the intensity the tracker used when the run ran priced: where the
  two differ, the output says so);
* Flexible Start: the whole run shifted later by up to ``window_h`` hours, in steps of the
  series' resolution; the best start and its saving are reported;
* Pause and Resume: the run pauses during series steps above a threshold while the pauses fit
  in a budget of the run's own duration (so it takes at most twice as long);
* other regions: the same energy at the static intensity of other zones.

A series must cover the recorded run: one that does not (a 2020 series for a 2026 run) would
price every scenario at its last value, so it is refused. A scenario that reaches past the
series' ends is priced at the nearest value and marked ``extrapolated`` in every output; Flexible
Start only tries starts whose whole run lies inside the series.

The energy profile is the records': each phase's energy spread evenly over its own time, from
its ``start_time``. A phase with another nested in it (validation in the middle of a training
epoch) was billed before and after the nested one, which has its own record: the outer record's
time skips the nested one's, so no time is counted twice and the run priced as recorded with the
series the tracker used is what its records say. The ranks' parts of one phase (a failed
distributed run writes one per rank, same seq) ran side by side: each rank's part is laid on that
rank's own timeline, over its own seconds, as that rank priced it.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import numbers
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from greencallbacks.carbon.intensity import MAX_INTENSITY_G_PER_KWH, place_intensity
from greencallbacks.carbon.series import parse_timestamp
from greencallbacks.textformat import markdown_table, number, printable

if TYPE_CHECKING:
    from greencallbacks.carbon.series import IntensitySource
    from greencallbacks.records import Record
    from greencallbacks.runs import Loaded

DEFAULT_STEP_S = 900.0  # for a source that does not say its resolution (live APIs: 15 min buckets)
MAX_CANDIDATE_STARTS = 20_000  # more than enough for 24 h at 5 min; bounds the work for odd inputs
MAX_SLOWDOWN = 2.0  # Pause and Resume: the run may take at most twice as long
# start_time is written to the millisecond: a record that follows another may seem to start up to
# two roundings before the first one ends, and must not be taken for one nested in it.
TIMESTAMP_SLACK_S = 0.002


@dataclass(frozen=True)
class Phase:
    """A piece of the run's energy profile: ``energy_kwh`` spread over [offset, offset + duration]."""

    offset_s: float  # from the run's start
    duration_s: float
    energy_kwh: float


# The recorded timing priced with the series given, as every other scenario: not the records' CO2eq.
AS_RECORDED = "as recorded, priced at this series"


@dataclass
class Scenario:
    name: str
    co2eq_g: float
    saving_g: float
    saving_pct: float
    start_unix: float | None = None
    end_unix: float | None = None
    detail: str = ""
    running: list[tuple[float, float]] = field(default_factory=list)  # wall-clock spans when the run runs
    extrapolated: bool = False  # priced partly outside the series, at its nearest value


@dataclass
class WhatIfResult:
    energy_kwh: float
    recorded_co2eq_g: float
    run_start_unix: float
    run_duration_s: float
    series_name: str
    as_recorded: Scenario
    flexible_start: Scenario
    pause_resume: Scenario | None
    regions: list[Scenario]
    threshold_g_per_kwh: float | None
    threshold_note: str
    series_covers: tuple[float, float] | None = None  # unix seconds; None for a source without timestamps
    window_end_unix: float | None = None  # the latest end Flexible Start tried
    idle_s: float = 0.0  # between a crash and the resume: no part of run_duration_s
    attempts: int = 1
    # What priced the records when the run ran: their CO2eq over their energy, and their sources.
    recorded_g_per_kwh: float | None = None
    recorded_sources: list[str] = field(default_factory=list)
    # The regions compared mix life-cycle and direct figures (``estimate.mixed_bases_note``), or
    # their providers publish another PUE than the records' (``estimate.kept_pue_note``); "" if not.
    regions_note: str = ""

    @property
    def scenarios(self) -> list[Scenario]:
        return [self.as_recorded, self.flexible_start, *([self.pause_resume] if self.pause_resume else []), *self.regions]

    def to_dict(self) -> dict:
        return {**asdict(self), "recorded_note": self.recorded_note}

    @property
    def recorded_note(self) -> str:
        """Why "Recorded CO2eq" and the as-recorded row differ, where they do beyond rounding: the
        run was priced with another intensity when it ran than the series given here."""
        if number(self.recorded_co2eq_g, 4) == number(self.as_recorded.co2eq_g, 4):
            return ""
        return (f"Recorded CO2eq ({number(self.recorded_co2eq_g, 4)} g) is the records' own, priced when the run ran"
                f"{self._recorded_pricing()}; the \"{self.as_recorded.name}\" row prices the same energy at the same "
                f"times with {self.series_name} ({number(self.as_recorded.co2eq_g, 4)} g), as every scenario is.")

    def _recorded_pricing(self) -> str:
        mean = f" at {self.recorded_g_per_kwh:.4g} gCO2eq/kWh on average" if self.recorded_g_per_kwh else ""
        sources = f", from {', '.join(self.recorded_sources)}" if self.recorded_sources else ""
        return mean + sources

    def to_markdown(self) -> str:
        resumed = (f" in {self.attempts} attempts ({_duration(self.idle_s)} idle between them, not counted)"
                   if self.idle_s > 0 else "")
        lines = [
            f"What-if for a run of {_energy_text(self.energy_kwh)} over {_duration(self.run_duration_s)}{resumed} "
            f"starting {_iso(self.run_start_unix)}, priced with {self.series_name}.",
            f"Recorded CO2eq: {number(self.recorded_co2eq_g, 4)} g (priced when it ran{self._recorded_pricing()}).",
            "",
            markdown_table(
                ["scenario", "CO2eq (g)", "saving (g)", "saving (%)", "detail"],
                [[s.name, number(s.co2eq_g, 4), number(s.saving_g, 4), f"{s.saving_pct:.1f}",
                  s.detail + ("; EXTRAPOLATED beyond the series' data" if s.extrapolated else "")] for s in self.scenarios],
                "lrrrl",
            ),
        ]
        if any(s.extrapolated for s in self.scenarios):
            lines += ["", self.extrapolation_note]
        if self.recorded_note:
            lines += ["", self.recorded_note]
        if self.regions_note:
            lines += ["", f"Regions: {self.regions_note}."]
        if self.threshold_note:
            lines += ["", self.threshold_note]
        return "\n".join(lines) + "\n"

    @property
    def extrapolation_note(self) -> str:
        if not any(s.extrapolated for s in self.scenarios):
            return ""
        covers = self.series_covers
        span = f" ({_iso(covers[0])} to {_iso(covers[1])})" if covers else ""
        return (f"Extrapolated: scenarios marked so reach outside the intensity series{span} or into a gap in "
                "its data, and are priced at its nearest value there (the value before a gap); their CO2eq and "
                "savings are not measured intensities.")

    def plot(self, path: str | Path, series: "IntensitySource") -> Path:
        """Intensity over time with the run's placements; PNG, PDF or SVG from ``path``'s extension.

        Drawn on a Figure with its own canvas: a notebook's matplotlib backend is left as it is.
        """
        from greencallbacks.figures import new_figure, plot_format, save_figure

        plot_format(path)  # a wrong extension fails before any drawing
        start = self.run_start_unix
        end = max([s.end_unix or start for s in (self.as_recorded, self.flexible_start, self.pause_resume) if s]
                  + [self.window_end_unix or start])  # the whole span tried, not only the best placements
        times = getattr(series, "times_unix", None)
        if times:
            # The series' own steps, where they are, not a grid laid from the run's start.
            inside = [t for t in times if start < t < end]
            edges = [start, *inside, end]
        else:
            step = max(_resolution_s(series, start, end), (end - start) / 5000)  # enough points for a figure
            edges = [start + i * step for i in range(int(math.ceil((end - start) / step)))] + [end]
        values = [series.mean_between(t, t).g_per_kwh for t in edges]
        hours = [(t - start) / 3600 for t in edges]
        figure = new_figure(9, 4)
        axes = figure.add_subplot()
        axes.step(hours, values, where="post", color="black", linewidth=1, label="intensity")
        axes.set_title(f"What-if, intensity from {self.series_name}", fontsize="medium")
        lanes = [(self.as_recorded, "tab:gray"), (self.flexible_start, "tab:green")]
        if self.pause_resume is not None:
            lanes.append((self.pause_resume, "tab:blue"))
        for scenario, colour in lanes:
            label = scenario.name + (" (extrapolated)" if scenario.extrapolated else "")
            for index, (left, right) in enumerate(scenario.running):
                axes.axvspan((left - start) / 3600, (right - start) / 3600, alpha=0.25, color=colour,
                             label=label if index == 0 else None)
        if self.series_covers is not None and self.series_covers[1] < end:
            axes.axvline((self.series_covers[1] - start) / 3600, color="tab:orange", linestyle=":", label="series ends")
        if self.threshold_g_per_kwh is not None:
            axes.axhline(self.threshold_g_per_kwh, color="tab:red", linestyle="--", linewidth=1, label="threshold")
        axes.set_xlabel(f"hours after {_iso(start)}")
        axes.set_ylabel("gCO2eq/kWh")
        axes.set_ylim(bottom=0)
        axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        return save_figure(figure, path)


# ------------------------------------------------------------------------------------ profile
def energy_profile(records: Iterable["Record"]) -> tuple[float, list[Phase]]:
    """The run's start (unix seconds) and its phases as offsets from it.

    A record's ``duration_s`` is the time billed to it, which leaves out the records nested in
    it; each record becomes the pieces of its own time, so the pieces never overlap.
    """
    return _profile(_laid_out_attempts(records))


def _laid_out_attempts(records: Iterable["Record"]) -> list[list[tuple[float, float, float]]]:
    """The pieces ``(wall start, seconds, kWh)`` of each attempt (a run resumed after a crash has several)."""
    attempts: dict[tuple[str, int], list["Record"]] = {}
    for record in records:
        attempts.setdefault((record.run_id, record.attempt), []).append(record)
    if not attempts:
        raise ValueError("records is empty: nothing to analyse")
    return [_lay_out_ranks(attempt) for attempt in attempts.values()]


def _lay_out_ranks(records: Sequence["Record"]) -> list[tuple[float, float, float]]:
    """One attempt's pieces, each rank's parts of a phase (a failed distributed run's: same seq, one
    per rank) on that rank's timeline beside the phases the ranks wrote as one.

    Laid by start time on one timeline, 2 ranks' parts of a failed epoch were taken for one nested in
    the other and laid end to end (a run of 1.41 s timed as 1.45 s); summed into one (``each_phase_once``),
    a part of 3 s (the rank that failed) was spread over the 10 s of the longest, priced at intensities
    of seconds it did not run."""
    by_seq: dict[int, list["Record"]] = {}
    for record in records:
        by_seq.setdefault(record.seq, []).append(record)
    shared = [group[0] for group in by_seq.values() if len(group) == 1]
    per_rank: dict[tuple[int, int], list["Record"]] = {}
    for group in by_seq.values():
        if len(group) > 1:
            for index, part in enumerate(group):
                per_rank.setdefault(_rank_of(part, index), []).append(part)
    if not per_rank:
        return _lay_out(shared)
    # The phases written as one are laid with the first rank's parts; each other rank's parts alone,
    # nested as they were on that rank (a validation completed inside the epoch that failed).
    pieces = []
    for index, (_, parts) in enumerate(sorted(per_rank.items())):
        mine = {id(part) for part in parts}
        pieces += _lay_out(shared + parts, keep=None if index == 0 else lambda record, mine=mine: id(record) in mine)
    return pieces


def _rank_of(part: "Record", index: int) -> tuple[int, int]:
    """The timeline of a part: ``(0, rank)`` where its components name the rank that wrote it; one
    that names none (a CPU-only rank with nothing of its own to measure, the host measured by rank
    0), ``(1, its place among its phase's parts)``. Keyed by its place alone, rank 1's nameless part
    read first (its file given first) took rank 0's timeline: laid after rank 0's part, a run of 20 s
    was timed 23 s."""
    ranks = {c.get("rank") for c in part.components if isinstance(c.get("rank"), int)}
    return (0, ranks.pop()) if len(ranks) == 1 else (1, index)


def _profile(attempts: Sequence[Sequence[tuple[float, float, float]]]) -> tuple[float, list[Phase]]:
    pieces = [piece for attempt in attempts for piece in attempt]
    run_start = min(start for start, _, _ in pieces)
    return run_start, [Phase(start - run_start, duration, energy) for start, duration, energy in pieces]


def idle_between_attempts(attempts: Sequence[Sequence[tuple[float, float, float]]],
                          run_start: float) -> list[tuple[float, float]]:
    """The spans ``(from, to)``, as offsets from the run's start, when no attempt of the run ran:
    between a crash and the resume. Nothing ran then, so it is no part of the run's time."""
    spans = sorted((min(s for s, _, _ in pieces), max(s + d for s, d, _ in pieces)) for pieces in attempts if pieces)
    idle = []
    reached = spans[0][1]
    for start, end in spans[1:]:
        if start > reached + TIMESTAMP_SLACK_S:
            idle.append((reached - run_start, start - run_start))
        reached = max(reached, end)
    return idle


@dataclass
class _Laying:
    """A record being laid out: its time used so far, where it goes on, and how much is left."""

    record: "Record"
    start_unix: float
    duration_s: float
    energy_kwh: float
    cursor: float
    left_s: float
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, length)

    @property
    def end(self) -> float:
        return self.cursor + self.left_s

    def pieces(self) -> list[tuple[float, float, float]]:
        per_s = self.energy_kwh / self.duration_s if self.duration_s > 0 else math.inf
        # All its energy at its instant: a record of no time, or of so little (a subnormal
        # duration_s, 1e-320 s) that its power overflows, priced every scenario "inf g".
        if not math.isfinite(per_s):
            return [(self.start_unix, 0.0, self.energy_kwh)]
        return [(start, length, per_s * length) for start, length in self.spans if length > 0]


def _lay_out(records: Sequence["Record"],
             keep: Callable[["Record"], bool] | None = None) -> list[tuple[float, float, float]]:
    """Pieces ``(wall start, seconds, kWh)`` of one attempt's records (those ``keep`` says, if given).

    As the tracker billed them: a record that starts while another still has time to go is
    nested in it, and the outer one goes on where the nested one ends. Ties in start go to the
    record opened first (the lower ``seq``), the outer one.
    """
    ordered = sorted(records, key=lambda r: (parse_timestamp(r.start_time), r.seq))
    pieces: list[tuple[float, float, float]] = []
    open_records: list[_Laying] = []

    def close_ended_by(moment: float) -> None:
        while open_records and open_records[-1].end <= moment + TIMESTAMP_SLACK_S:
            ended = open_records.pop()
            ended.spans.append((ended.cursor, ended.left_s))
            if keep is None or keep(ended.record):
                pieces.extend(ended.pieces())
            if open_records:  # the outer record goes on after the nested one
                open_records[-1].cursor = max(open_records[-1].cursor, ended.end)

    for record in ordered:
        start = parse_timestamp(record.start_time)
        close_ended_by(start)
        if open_records:  # nested: the outer record's time so far ends here
            outer = open_records[-1]
            used = max(0.0, start - outer.cursor)
            outer.spans.append((outer.cursor, used))
            outer.left_s -= used
            outer.cursor = start
        duration = max(0.0, record.duration_s)
        open_records.append(_Laying(record, start, duration, record.energy_kwh, cursor=start, left_s=duration))
    close_ended_by(math.inf)
    return pieces


def _refuse_bad_start_times(loaded: "Loaded", records: Sequence["Record"]) -> None:
    """The report reads no start time, whatif places every record by its own: one that is no
    time is said by its file and line, not as the parser's bare message."""
    for record in records:
        try:
            parse_timestamp(record.start_time)
        except ValueError:
            raise ValueError(f"{loaded.where(record)}: start_time {record.start_time!r} is not an ISO-8601 time") from None


def co2_at(phases: Sequence[Phase], start_unix: float, series: "IntensitySource") -> float:
    """Grams of CO2eq if the profile starts at ``start_unix``: sum of E_i x mean intensity over its span."""
    total = 0.0
    for phase in phases:
        left = start_unix + phase.offset_s
        total += phase.energy_kwh * series.mean_between(left, left + phase.duration_s).g_per_kwh
    return total


def _resolution_s(series: object, start_unix: float, end_unix: float) -> float:
    """The series' step (smallest gap between its timestamps; a one-point series' own span where
    its file gives one), else ``DEFAULT_STEP_S``."""
    times = getattr(series, "times_unix", None)
    if times and len(times) > 1:
        return min(b - a for a, b in zip(times, times[1:]))
    step = getattr(series, "step_s", 0.0)
    return float(step) if step else float(getattr(series, "bucket_s", DEFAULT_STEP_S))


def series_coverage(series: object) -> tuple[float, float] | None:
    """(first timestamp, end of the last step) of a series with timestamps (``IntensitySeries.coverage``,
    the span the tracker prices without extrapolating); None for other sources."""
    return getattr(series, "coverage", None) if getattr(series, "times_unix", None) else None


def _slot_edges(series: object, start_unix: float, end_unix: float, step_s: float) -> list[float]:
    """Where the intensity may change between start and end: the series' own timestamps, or a grid."""
    times = getattr(series, "times_unix", None)
    if times:
        inner = [t for t in times if start_unix < t < end_unix]
    else:
        count = int(math.ceil((end_unix - start_unix) / step_s))
        inner = [start_unix + i * step_s for i in range(1, count)]
    return [start_unix, *inner, end_unix]


# ---------------------------------------------------------------------------------- strategies
def flexible_start(
    phases: Sequence[Phase], run_start: float, series: "IntensitySource", window_s: float, step_s: float
) -> tuple[float, float]:
    """(best delay in seconds, its CO2eq) over delays 0, step, ..., window; ties go to the earliest."""
    count = int(window_s // step_s) if step_s > 0 else 0
    if count > MAX_CANDIDATE_STARTS:
        step_s = window_s / MAX_CANDIDATE_STARTS
        count = MAX_CANDIDATE_STARTS
    delays = {index * step_s for index in range(1, count + 1)}
    # Also starts on the series' own edges: a run that began at 10:17 may do best starting at 11:00.
    times = getattr(series, "times_unix", None) or ()
    delays.update(t - run_start for t in times if run_start < t <= run_start + window_s)
    best_delay, best_co2 = 0.0, co2_at(phases, run_start, series)
    for delay in sorted(delays)[: MAX_CANDIDATE_STARTS * 2]:
        co2 = co2_at(phases, run_start + delay, series)
        if co2 < best_co2 - 1e-12 * max(1.0, abs(best_co2)):
            best_delay, best_co2 = delay, co2
    return best_delay, best_co2


def pause_schedule(
    run_start: float, run_duration_s: float, series: "IntensitySource", threshold: float, step_s: float,
    idle: Sequence[tuple[float, float]] = (),
) -> list[tuple[float, float, float]]:
    """Running spans ``(wall_start, wall_end, work_offset)`` for Pause and Resume.

    Walks the series' steps from the run's start: a step whose mean intensity is above the
    threshold is skipped whole while the pauses so far plus this step fit in the budget (the
    run's own running time); otherwise the run works through it, until its work is done.
    ``run_duration_s`` is the profile's length from first start to last end; ``idle``, the
    spans of it (offsets) when no attempt ran: they go along as recorded, are not paused (that
    would save nothing) and are not part of the budget.
    """
    budget = (run_duration_s - sum(end - start for start, end in idle)) * (MAX_SLOWDOWN - 1.0)
    horizon = run_start + run_duration_s + budget
    edges = _slot_edges(series, run_start, horizon, step_s)
    running: list[tuple[float, float, float]] = []
    paused = work_done = 0.0
    for left, right in zip(edges, edges[1:]):
        if work_done >= run_duration_s:
            break
        length = right - left
        worked = min(length, run_duration_s - work_done)
        idle_only = any(start <= work_done and work_done + worked <= end for start, end in idle)
        if not idle_only and paused + length <= budget and series.mean_between(left, right).g_per_kwh > threshold:
            paused += length
            continue
        if running and running[-1][1] == left:  # extend the span the run is already in
            w0, _, offset = running[-1]
            running[-1] = (w0, left + worked, offset)
        else:
            running.append((left, left + worked, work_done))
        work_done += worked
    if work_done < run_duration_s - 1e-9:  # only if the series' edges end early; finish straight on
        last_end = running[-1][1] if running else run_start
        running.append((last_end, last_end + run_duration_s - work_done, work_done))
    return running


def co2_with_schedule(
    phases: Sequence[Phase], running: Sequence[tuple[float, float, float]], series: "IntensitySource"
) -> float:
    """Grams of CO2eq of the profile executed in the given running spans.

    A phase inside one span is priced as ``co2_at`` prices it (its own energy over its own
    duration): a schedule that pauses nothing then costs exactly what the run cost as recorded,
    not that plus the rounding of splitting it differently.
    """
    total = 0.0
    work_ends = [offset for _, _, offset in running[1:]]
    if running:  # the last span runs to the end of the work, whatever the rounding of its wall times
        wall_start, wall_end, offset = running[-1]
        profile_end = max((p.offset_s + p.duration_s for p in phases), default=0.0)
        work_ends.append(max(offset + (wall_end - wall_start), profile_end))
    for phase in phases:
        if phase.duration_s == 0:
            wall = _wall_time(running, phase.offset_s)
            total += phase.energy_kwh * series.mean_between(wall, wall).g_per_kwh
            continue
        phase_end = phase.offset_s + phase.duration_s
        kwh_per_s = phase.energy_kwh / phase.duration_s
        # From the first span that ends after the phase begins (a scan from the first span each
        # time made a long run's schedule quadratic: 43 s for 100k records), to the last it reaches.
        for i in range(bisect.bisect_right(work_ends, phase.offset_s), len(running)):
            (wall_start, _, work_offset), work_end = running[i], work_ends[i]
            if work_offset >= phase_end:
                break
            if work_offset <= phase.offset_s and phase_end <= work_end:  # the whole phase in this span
                w_left = wall_start + (phase.offset_s - work_offset)
                total += phase.energy_kwh * series.mean_between(w_left, w_left + phase.duration_s).g_per_kwh
                break
            left, right = max(phase.offset_s, work_offset), min(phase_end, work_end)
            if right > left:
                w_left = wall_start + (left - work_offset)
                total += kwh_per_s * (right - left) * series.mean_between(w_left, w_left + right - left).g_per_kwh
    return total


def _wall_time(running: Sequence[tuple[float, float, float]], work_offset: float) -> float:
    for wall_start, wall_end, offset in running:
        if offset <= work_offset <= offset + (wall_end - wall_start):
            return wall_start + (work_offset - offset)
    return running[-1][1]


def default_threshold(series: "IntensitySource", run_start: float, may_span_s: float, step_s: float) -> float:
    """The median step intensity over the span the run may use (``may_span_s`` from its start)."""
    edges = _slot_edges(series, run_start, run_start + may_span_s, step_s)
    return statistics.median(series.mean_between(a, b).g_per_kwh for a, b in zip(edges, edges[1:]))


# ------------------------------------------------------------------------------------------ API
def check_options(window_h: float = 24, threshold: float | None = None) -> None:
    """Refuse a window or threshold that is no such number, before any run is read."""
    if not (isinstance(window_h, numbers.Real) and math.isfinite(window_h) and window_h >= 0):
        raise ValueError(f"window_h must be a finite number of hours >= 0, got {window_h!r}")
    if threshold is not None and not (
        isinstance(threshold, numbers.Real) and 0 < threshold <= MAX_INTENSITY_G_PER_KWH
    ):  # the bound of every intensity: above it no series value can be, and the run never pauses
        raise ValueError(f"threshold must be a number of gCO2eq/kWh > 0 and at most {MAX_INTENSITY_G_PER_KWH:g}, "
                         f"got {threshold!r}")


def whatif(
    records: Sequence["Record"],
    series: "IntensitySource | str | Path",
    window_h: float = 24,
    threshold: float | None = None,
    zones: Iterable[str] = (),
    step_s: float | None = None,
) -> WhatIfResult:
    """What ``records`` would have emitted as recorded, started later, paused, or elsewhere.

    ``series``: a CSV/JSON series path or any object with ``mean_between``. ``threshold``
    (g/kWh) for Pause and Resume; None: the median intensity over the span the run may use.
    ``zones``: static zones or cloud regions to compare (``FR``, ``US-CA``, ``gcp:europe-west1``).
    ``step_s``: the Flexible Start step; default: the series' resolution.
    """
    check_options(window_h, threshold)
    if isinstance(series, (str, Path)):
        from greencallbacks.carbon.series import IntensitySeries

        series = IntensitySeries.from_file(series)
    records = list(records)
    attempts = _laid_out_attempts(records)
    run_start, phases = _profile(attempts)
    run_end = max(run_start + p.offset_s + p.duration_s for p in phases)
    span = run_end - run_start  # first start to last end: a resumed run's idle time included
    idle = idle_between_attempts(attempts, run_start)
    idle_s = sum(end - start for start, end in idle)
    run_duration = span - idle_s  # the time it ran
    energy = sum(r.energy_kwh for r in records)  # the records' own sum, not the pieces'
    step = step_s if step_s is not None else _resolution_s(series, run_start, run_end)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step_s must be a positive number of seconds, got {step_s!r}")
    series_name = getattr(series, "description", None) or getattr(series, "name", type(series).__name__)
    coverage = series_coverage(series)
    if coverage is not None and (run_end <= coverage[0] or run_start >= coverage[1]):
        raise ValueError(
            f"the intensity series {series_name} covers {_iso(coverage[0])} to {_iso(coverage[1])}, but the run "
            f"ran {_iso(run_start)} to {_iso(run_end)}: every scenario would be priced at the series' "
            "nearest value. Give a series that covers the run."
        )

    def outside(left: float, right: float) -> bool:
        """Priced, somewhere in [left, right], by a value held from another time: past the series'
        ends, or across a gap in its data."""
        if coverage is not None and (left < coverage[0] or right > coverage[1]):
            return True
        gaps_between = getattr(series, "gaps_between", None)
        return gaps_between is not None and bool(gaps_between(left, right))

    baseline = co2_at(phases, run_start, series)

    def scenario(name: str, co2: float, **extra) -> Scenario:
        saving = baseline - co2
        return Scenario(name, co2, saving, 100.0 * saving / baseline if baseline > 0 else 0.0, **extra)

    as_recorded = scenario(AS_RECORDED, baseline, start_unix=run_start, end_unix=run_end,
                           detail=f"start {_iso(run_start)}", running=[(run_start, run_end)],
                           extrapolated=outside(run_start, run_end))

    window_s = window_h * 3600.0
    cut = ""
    if coverage is not None and run_end + window_s > coverage[1]:
        # Later starts would be priced at the series' last value: not a forecast of anything.
        window_s = max(0.0, coverage[1] - run_end)
        cut = f"; window cut to {_duration(window_s)} where the series ends"
    delay, best = flexible_start(phases, run_start, series, window_s, step)
    flexible = scenario(
        f"flexible start (window {window_h:g} h)", best, start_unix=run_start + delay, end_unix=run_end + delay,
        detail=f"best start {_iso(run_start + delay)} (+{_duration(delay)}){cut}",
        running=[(run_start + delay, run_end + delay)], extrapolated=outside(run_start + delay, run_end + delay),
    )

    pause_resume = None
    threshold_note = ""
    chosen_threshold = threshold
    if run_duration > 0:
        may_span = span + run_duration * (MAX_SLOWDOWN - 1.0)  # its pauses are budgeted on its running time
        if chosen_threshold is None:
            chosen_threshold = default_threshold(series, run_start, may_span, step)
            threshold_note = (f"Pause-and-resume threshold: {chosen_threshold:.4g} gCO2eq/kWh, the median over the "
                              f"{_duration(may_span)} the run may span (give --threshold to choose).")
        spans = pause_schedule(run_start, span, series, chosen_threshold, step, idle=idle)
        paused_s = spans[-1][1] - run_start - span
        pause_resume = scenario(
            f"pause and resume (> {chosen_threshold:.4g} g/kWh)", co2_with_schedule(phases, spans, series),
            start_unix=run_start, end_unix=spans[-1][1],
            detail=f"paused {_duration(paused_s)} in {_pause_count(run_start, spans)} pause(s), "
                   f"ends {_iso(spans[-1][1])}",
            running=[(a, b) for a, b, _ in spans], extrapolated=outside(run_start, spans[-1][1]),
        )

    from greencallbacks.estimate import kept_pue_note, mixed_bases_note, provider_pue_of

    regions, bases, provider_pues = [], [], []
    for zone in zones:
        zone = zone.strip()
        if not zone:
            continue
        static = place_intensity(zone)
        bases.append(static.basis)
        provider_pues.append(provider_pue_of(static))
        regions.append(scenario(f"in {zone}", energy * static.g_per_kwh,
                                detail=f"{static.g_per_kwh:.4g} g/kWh, {static.source}"))
    notes = (mixed_bases_note(bases), kept_pue_note([r.pue for r in records], provider_pues))
    regions_note = "; ".join(note for note in notes if note)

    return WhatIfResult(
        energy_kwh=energy,
        recorded_co2eq_g=sum(r.co2eq_g for r in records),
        recorded_g_per_kwh=recorded_g_per_kwh(records),
        recorded_sources=sorted({r.intensity_source for r in records if r.intensity_source}),
        run_start_unix=run_start,
        run_duration_s=run_duration,
        idle_s=idle_s,
        attempts=len(attempts),
        series_name=series_name,
        as_recorded=as_recorded,
        flexible_start=flexible,
        pause_resume=pause_resume,
        regions=regions,
        regions_note=regions_note,
        threshold_g_per_kwh=chosen_threshold,
        threshold_note=threshold_note,
        series_covers=coverage,
        window_end_unix=run_end + window_s,
    )


def recorded_g_per_kwh(records: Sequence["Record"]) -> float | None:
    """The intensity the records were priced at when the run ran, energy-weighted."""
    energy = sum(r.energy_kwh for r in records)
    return sum(r.co2eq_g for r in records) / energy if energy > 0 else None


def _energy_text(kwh: float) -> str:
    from greencallbacks.textformat import ENERGY_UNITS, pick_unit

    unit, factor = pick_unit([kwh], ENERGY_UNITS)
    return f"{number(kwh * factor, 4)} {unit}"


def _pause_count(run_start: float, spans: Sequence[tuple[float, float, float]]) -> int:
    gaps_between = sum(1 for before, after in zip(spans, spans[1:]) if after[0] > before[1])
    return gaps_between + (1 if spans and spans[0][0] > run_start else 0)


def _iso(unix_s: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


# ------------------------------------------------------------------------------------------ CLI
def build_parser(prog: str = "greencallbacks whatif") -> argparse.ArgumentParser:
    # An empty list or path refused as report's are.
    from greencallbacks.cli import OneLineErrorParser, _comma_list, path_argument

    parser = OneLineErrorParser(
        prog=prog,
        description="What a recorded run would have emitted started later, paused while the grid is dirty, or elsewhere.",
    )
    parser.add_argument("paths", nargs="+", type=path_argument, metavar="run",
                        help="energy-records.jsonl, or a directory searched for them at any depth (a log root); "
                             "several for a run that wrote in several")
    parser.add_argument("--run-id", help="the run to analyse (default: each run found)")
    parser.add_argument("--intensity", required=True, metavar="SERIES", type=path_argument,
                        help="intensity series: CSV or JSON (own columns, Electricity Maps, UK Carbon Intensity, WattTime)")
    parser.add_argument("--window-h", type=float, default=24.0, help="latest delayed start to try, hours (default 24)")
    parser.add_argument("--threshold", type=float, metavar="G", help="pause above this gCO2eq/kWh (default: median)")
    parser.add_argument("--zones", type=_comma_list, default=[],
                        help="comma-separated zones or cloud regions to compare, e.g. FR,DE")
    parser.add_argument("--plot", metavar="FILE", type=path_argument,
                        help="write a plot of intensity and the run's placements (.png, .pdf, .svg)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    return parser


# Python argument names in library messages, as the flags that set them here: a zone, country or
# region of the library's messages ("use the US state (e.g. zone='US-CA')") is one of --zones.
_FLAGS = {"window_h": "--window-h", "threshold": "--threshold", "step_s": "the series' step", "run_id": "--run-id",
          "zone": "--zones", "country": "--zones", "region": "--zones"}


def _plot_path(plot: str, run: str, several: bool) -> Path:
    """``plot``, or for one run of several ``<stem>-<run id><suffix>`` beside it, the run id made a
    file name as its summary's is (``bert/lr=1e-4`` named a directory, and failed the whole command)."""
    from greencallbacks.records import run_file_name

    path = Path(plot)
    return path.with_name(run_file_name(f"{path.stem}-", run).removesuffix(".json") + path.suffix) if several else path


def unfinished_note(run_records: Sequence["Record"]) -> str:
    """For a run that left no write-up (``runs.unfinished_runs``): what its scenarios price."""
    from greencallbacks.records import counted_to_heartbeat

    held = "its open phases up to its last heartbeat" if counted_to_heartbeat(run_records) else "up to its last record"
    return (f"The run has no write-up (killed outright, or still training): every scenario prices what its records "
            f"hold, {held}.")


def records_missing_note(run_records: Sequence["Record"], run_summaries: dict) -> str | None:
    """For a run whose records lack part of it (earlier attempts written in another directory, or
    less energy than its energy-summary.json counts), as ``report`` says it; None where they do not."""
    from greencallbacks.report.data import records_lack

    parts = records_lack(run_records, run_summaries)
    return f"Every scenario prices only what these records hold: {'; '.join(parts)}." if parts else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from greencallbacks.carbon.series import IntensitySeries
    from greencallbacks.cli import cli_message, load_records
    from greencallbacks.records import by_run
    from greencallbacks.report import _finite_json
    from greencallbacks.report.plot import check_plot_path
    from greencallbacks.runs import describe_runs

    results: list[tuple[str, WhatIfResult]] = []
    try:
        if args.plot is not None:
            check_plot_path(args.plot, "--plot")  # a file that could not be written, before any run is read
        # The flags before the records: a bad flag is said as the flag's, alone, not after the
        # listing of the runs found nor as one run's error.
        check_options(args.window_h, args.threshold)
        zones = args.zones
        for zone in zones:
            place_intensity(zone)
        series = IntensitySeries.from_file(args.intensity)
        # Refuses files without records, as report and lifecycle do; an unknown id names the runs found.
        loaded = load_records(args.paths, args.run_id)
        runs = [args.run_id] if args.run_id else loaded.runs
        records = by_run(loaded.records)
        for run in runs:
            _refuse_bad_start_times(loaded, records[run])
            try:
                result = whatif(records[run], series, window_h=args.window_h, threshold=args.threshold, zones=zones)
            except ValueError as error:
                raise ValueError(f"run {printable(run)}: {error}") from None
            results.append((run, result))
            if args.plot:
                result.plot(_plot_path(args.plot, run, len(runs) > 1), series)
    except (ValueError, OSError) as error:
        print(f"greencallbacks whatif: error: {cli_message(str(error), _FLAGS)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # matplotlib for --plot (extras.missing says how to install it)
        print(f"greencallbacks whatif: error: {error}", file=sys.stderr)
        return 1
    if len(runs) > 1:  # said once every run is analysed: an error above is the only line
        print(f"greencallbacks whatif: {len(runs)} runs found (choose one with --run-id):", file=sys.stderr)
        for line in describe_runs(loaded):
            print(f"  {line}", file=sys.stderr)
    unfinished = {run: unfinished_note(records[run]) for run, _ in results if run in loaded.unfinished}
    # A remnant priced as the run misled as lifecycle did: said as report says it.
    partial = {run: note for run, _ in results if (note := records_missing_note(records[run], loaded.summaries))}
    if args.json:
        documents = [{"run_id": run, **result.to_dict(), **({"unfinished_note": unfinished[run]} if run in unfinished else {}),
                      **({"records_missing_note": partial[run]} if run in partial else {})}
                     for run, result in results]
        # null for an infinity or NaN, as report's JSON: a reader of standard JSON fails on Infinity.
        print(json.dumps(_finite_json(documents[0] if len(documents) == 1 else documents), indent=2, allow_nan=False))
        return 0
    for run, result in results:
        if len(results) > 1:
            print(f"## Run {printable(run)}\n")
        print(result.to_markdown())
        if run in unfinished:
            print(unfinished[run] + "\n")
        if run in partial:
            print(partial[run] + "\n")
        if args.plot:
            print(f"Plot written to {_plot_path(args.plot, run, len(results) > 1)}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
