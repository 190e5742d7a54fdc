"""What every adapter needs between its constructor and its framework's hooks.

``EnergySession`` validates the user's settings at construction (so a bad zone fails before
training starts), and at ``start`` finds the sensors this process should read, builds the meter
and the reducer, tells the user once what is estimated and why, and starts the tracker. The
adapters hold one and only map hooks onto ``session.tracker``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from greencallbacks import interrupts
from greencallbacks.budget import Budget
from greencallbacks.carbon import Carbon, IntensitySeries
from greencallbacks.carbon_aware import CarbonAwarePause
from greencallbacks.distributed import LocalReducer, Reducer
from greencallbacks.checks import check_output_dir, keywords_checked, unknown_keyword
from greencallbacks.guard import not_ours
from greencallbacks.ledger import read_run_records
from greencallbacks.meter import Meter, warn
from greencallbacks.prediction import priced_by_series
from greencallbacks.records import Record
from greencallbacks.sensors.base import Kind, Method, Sensor
from greencallbacks.sensors.discover import check_cpu_tdp_w, check_gpus
from greencallbacks.summaries import SUMMARY_FILE, kept_summary_path
from greencallbacks.tracker import Tracker
from greencallbacks.units import J_PER_KWH


# Notices already given in this process: a notebook's every fit, evaluate and predict starts a
# session, and the same two paragraphs each time would bury what is new.
_SAID: set[str] = set()


@keywords_checked
class EnergySession:
    """Settings plus the live tracker of one training run.

    Args:
        country / zone / region / intensity / series / pue: where gCO2eq/kWh and PUE come from
            (see ``greencallbacks.carbon.Carbon``); nothing given means the world average, said
            in every record and in one warning. A ``series`` file also prices the CO2eq still to
            come in the prediction (``prediction.priced_by_series``).
        output_dir: where records go (adapters default it to the framework's log directory).
        run_id: names the run (default: random; restored on resume).
        gpus: ``"auto"`` (the device this process trains on), a list of CUDA indices, or ``None``.
        cpu_tdp_w: the TDP of one CPU socket in watts, used when RAPL cannot be read.
        extra_sensors: more sensors, e.g. ``ConstantPowerSensor("switch", 40)``, with unique names
            none of which discovery may use (``sensors.discover.RESERVED_NAMES``: cpu, ram, gpu0, ...).
        sensors: use exactly these sensors instead of discovering them (custom set-ups, tests).
        carbon_aware: a ``CarbonAwarePause``: wait between epochs while the grid's intensity is
            above its threshold, within its delay budget (logged as ``carbon_pause_s``).
        budget: a ``greencallbacks.Budget``: checked after every training epoch (``check_budget``)
            against the run's totals and prediction; warns once at ``warn_at`` and at 100 %, and
            with ``on_exceed="stop"`` asks the adapter to end training. Each run gets a fresh copy
            of it (``session.budget``); a resume continues the saved one.
        embodied: how records bill the hardware's manufacturing footprint (see ``Tracker``):
            None (GPUs with a published footprint), a dict of ``embodied_for`` arguments such as
            ``{"host": "server", "host_share": 0.25}``, or False.
        framework: written into records.
    """

    def __init__(
        self,
        *,
        country: str | None = None,
        zone: str | None = None,
        region: str | None = None,
        intensity: float | None = None,
        series=None,
        pue: float | None = None,
        output_dir: str | os.PathLike | None = None,
        run_id: str | None = None,
        gpus: str | Sequence[int] | None = "auto",
        cpu_tdp_w: float | None = None,
        extra_sensors: Iterable[Sensor] = (),
        sensors: Sequence[Sensor] | None = None,
        carbon_aware: CarbonAwarePause | None = None,
        budget: Budget | None = None,
        embodied: dict | bool | None = None,
        framework: str = "",
    ) -> None:
        # A series file read here, once, and handed to Carbon as the object it would make of the
        # path: the prediction looks ahead in it (a live source or an object of the user's gives
        # no values to come that can be trusted, or asked for, at every epoch end).
        if isinstance(series, (str, os.PathLike)) and all(v is None for v in (country, zone, region, intensity)):
            series = IntensitySeries.from_file(series)
        self._series_ahead = series if isinstance(series, IntensitySeries) else None
        self.carbon = Carbon(country=country, zone=zone, region=region, intensity=intensity, series=series, pue=pue)
        gpus = check_gpus(gpus)
        cpu_tdp_w = check_cpu_tdp_w(cpu_tdp_w)
        as_lists: dict[str, list] = {}  # (once: a generator is read only once)
        for argument, given in (("extra_sensors", extra_sensors), ("sensors", sensors)):
            if given is None:
                continue
            if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
                raise ValueError(f"{argument} must be a list of greencallbacks Sensor objects, got {given!r}")
            given = as_lists[argument] = list(given)
            for sensor in given:
                if not isinstance(sensor, Sensor):
                    raise ValueError(f"{argument} must hold greencallbacks Sensor objects, got {sensor!r}")
            # The meter refuses clashing names at start, inside the framework's fit: say so here.
            names = [sensor.name for sensor in given]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"{argument}: sensor names must be unique, got duplicates {duplicates}")
        self.extra_sensors = as_lists.get("extra_sensors", [])
        _reject_reserved_names(self.extra_sensors)
        self.sensors = as_lists.get("sensors")
        self.gpus = gpus
        self.cpu_tdp_w = cpu_tdp_w
        check_output_dir(output_dir)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if carbon_aware is not None and not isinstance(carbon_aware, CarbonAwarePause):
            raise ValueError(f"carbon_aware must be a greencallbacks.carbon_aware.CarbonAwarePause, got {carbon_aware!r}")
        if budget is not None and not isinstance(budget, Budget):
            raise ValueError(f"budget must be a greencallbacks.Budget (or None), got {budget!r}")
        self.tracker = Tracker(
            carbon=self.carbon, output_dir=self.output_dir, run_id=run_id, framework=framework, embodied=embodied
        )
        # A copy per session, as for the budget below: a second fit with one callback is a new
        # run, with its own delay budget (it inherited the first run's spent one, and its pauses).
        self.carbon_aware = carbon_aware.for_a_new_run() if carbon_aware is not None else None
        # A fresh copy: the user's object may be handed to several runs (a second fit), and a
        # budget's warnings and stop belong to one run.
        self.budget = (
            Budget(**budget.limits, on_exceed=budget.on_exceed, warn_at=budget.warn_at) if budget is not None else None
        )
        self._budget_metrics: dict[str, float] = {}
        self._budget_continued = False  # a checkpoint's budget state applied (same limits and action)
        # The run's budget, read from its checkpoint by a session given none (a test or evaluate
        # in a later session, a callback written inline without it): passed on in the state and the
        # summary, which this session's call rewrites. Dropped, they lost the budget's stop and
        # warnings: the report no longer said the budget stopped the training, and a resume with
        # the budget repeated its warnings.
        self._budget_kept: Budget | None = None
        if self.budget is not None:  # in the summary even if no epoch ends (evaluate alone, a crash)
            self.tracker.summary_extra["budget"] = self._budget_summary
        self.unavailable: list = []
        self._neighbours: GpuNeighbours | None = None

    @property
    def running(self) -> bool:
        return self.tracker.running

    def start(
        self,
        *,
        output_dir: str | os.PathLike | None = None,
        device_indices: Sequence[int] | None = None,
        reducer: Reducer | None = None,
        sync: Callable[[], object] | None = None,
    ) -> None:
        """Find this process's sensors and start measuring.

        ``device_indices``: the CUDA devices this process trains on (``gpus="auto"``; ``[]``
        for CPU training; ``None``: every visible GPU). With
        several ranks, only the first rank of each host measures CPU and RAM.
        """
        if self.running:
            return
        reducer = reducer or LocalReducer()
        sensors = self.sensors
        gpus_wanted: list[int] = []
        self.tracker.unmeasured_gpus = []  # (the GPUs discovery could not measure: in the summary)
        if sensors is None:
            from greencallbacks.sensors.discover import discover_sensors, unmeasured_gpus

            # "auto": the devices the adapter says this process trains on ([] = CPU training),
            # or every visible GPU when nobody said.
            gpus = self.gpus
            if gpus == "auto" and device_indices is not None:
                gpus = list(device_indices) or None
            # GPUs the process is known to train on (not "every visible GPU": on a CPU box, none).
            gpus_wanted = list(gpus) if isinstance(gpus, list) else []
            if reducer.measures_host:
                from greencallbacks.sensors.estimate import measure_other_processes

                # An estimate of the host covers the other ranks on it (a RAPL counter already does);
                # set before the estimate takes its base, so a run after a distributed one in this
                # process has no rank of that one left in its tree.
                measure_other_processes(getattr(reducer, "host_pids", ()))
            discovery = discover_sensors(gpus=gpus, host=reducer.measures_host, cpu_tdp_w=self.cpu_tdp_w)
            sensors = [*discovery.sensors, *self.extra_sensors]
            self.unavailable = discovery.unavailable
            self.tracker.unmeasured_gpus = unmeasured_gpus(self.unavailable)
        # Stamped on the process's clock (meter.unix_now): the meters of one run's calls (fit,
        # then test) agree across a wall-clock step between them.
        meter = Meter(sensors, sync=sync)
        # Every rank says what of its own GPUs goes unmeasured (rank 1's lost GPU was left out of
        # the records unsaid); the host and the intensity, the same for all, rank 0 alone.
        self._tell_once(meter, gpus_wanted=gpus_wanted, own_gpus_only=reducer.rank != 0)
        self._neighbours = GpuNeighbours(meter.sensors, getattr(reducer, "pids_on_host", ()))
        self.tracker.summary_extra["gpu_other_processes"] = self._neighbours.summary
        self.tracker.start(meter, reducer=reducer, output_dir=output_dir if self.output_dir is None else None)
        self._delay_spent_from_records()
        self._budget_warnings_since_checkpoint()

    def _tell_once(self, meter: Meter, gpus_wanted: Sequence[int] = (), own_gpus_only: bool = False) -> None:
        """Say what is estimated, which GPUs this process trains on go unmeasured, and what
        intensity is assumed, each message once per process (``own_gpus_only``: only the GPUs).

        ``gpus_wanted``: the CUDA indices the process trains on, when known (an adapter's
        ``device_indices`` or ``gpus=``). A GPU has no estimate to fall back on, so one that cannot be
        measured is left out of the records: that must be said even when nothing is estimated.
        """

        def warn_once(message: str) -> None:
            if message not in _SAID:
                _SAID.add(message)
                warn(message)

        gpu_problems = [u for u in self.unavailable if u.kind == Kind.GPU]
        gpu_measured = any(s.kind == Kind.GPU for s in meter.sensors)
        tell_gpus = bool(gpus_wanted) and (not gpu_measured or bool(gpu_problems))
        estimated = [s for s in meter.sensors if s.method == Method.ESTIMATED and not own_gpus_only]
        if estimated:
            # The GPU reasons go in the GPU notice when there is one: each said once.
            reasons = _reasons([u for u in self.unavailable if not (tell_gpus and u.kind == Kind.GPU)])
            warn_once(
                "greencallbacks: "
                + ", ".join(s.name for s in estimated)
                + " energy is estimated, not measured"
                + (f" [{reasons}]" if reasons else "")
                + ". Records label each component's method."
            )
        if tell_gpus:
            reasons = _reasons(gpu_problems)
            if gpu_measured:
                names = ", ".join(dict.fromkeys(u.name for u in gpu_problems))
                what = f"{names} energy is not measured, so records leave it out"
            else:
                devices = ", ".join(str(i) for i in gpus_wanted)
                what = f"no GPU energy is measured though this process trains on GPU {devices}, so records leave it out"
            warn_once("greencallbacks: " + what + (f" [{reasons}]" if reasons else "") + ".")
        if self.carbon.is_default and not own_gpus_only:
            intensity = self.carbon.intensity_between(0.0, 0.0)
            warn_once(
                f"greencallbacks: no location configured, so CO2eq uses the world average "
                f"{intensity.g_per_kwh:.0f} gCO2eq/kWh ({intensity.source}). Pass country=, zone=, region= "
                "or intensity= for your grid."
            )

    # ---------------------------------------------------- what adapters log and checkpoint
    def metrics(self, phase: str, prefix: str = "") -> dict[str, float]:
        """The tracker's metrics for the last finished ``phase``, plus the policies' (carbon-aware pauses)."""
        values = self.tracker.metrics(phase, prefix)
        if prefix + "co2eq_g_predicted" in values and self._series_ahead is not None:
            # Logged as the budget judges it: priced at the series ahead (only the logged keys).
            values[prefix + "co2eq_g_predicted"] = float(self._prediction()["co2eq_g_predicted"])
        if values and phase == "train" and self.carbon_aware is not None:
            values[prefix + "carbon_pause_s"] = float(self.carbon_aware.total_paused_s)
        if values and phase == "train" and self.budget is not None:
            # As of the last check (adapters check right after the epoch ends, before logging).
            values.update({prefix + k: v for k, v in (self._budget_metrics or self._budget_values()).items()})
        return values

    def _budget_values(self) -> dict[str, float]:
        assert self.budget is not None
        return {"budget_used_fraction": self.budget.used_fraction, "budget_stop": 1.0 if self.budget.stopped else 0.0}

    def _budget_summary(self, summary: dict) -> dict:
        """The summary's ``budget`` field, made when the summary is written: with the run's final
        totals, which include what came after the last check (a crashed epoch, test, predict)."""
        assert self.budget is not None
        return self.budget.summary(energy_kwh=summary["energy_kwh"], co2eq_g=summary["co2eq_g"])

    def check_budget(self, *, energy_kwh: float | None = None, co2eq_g: float | None = None) -> bool:
        """Judge the run's totals and prediction against the budget; True when training must stop.

        Adapters call it after each training epoch's record is in, then end training their
        framework's clean way when it returns True. At a step log, pass the live totals
        (``energy_kwh``, ``co2eq_g``: the records' totals plus the open phase so far); by default
        the totals of the closed phases are used. Each warning is given once per run (a resumed
        run does not repeat them); a stop keeps answering True.
        """
        if self.budget is None or not self.running:
            return False
        tracker = self.tracker
        prediction = self._prediction() if tracker.plans_run else None
        decision = self.budget.check(
            tracker.total_energy_j / J_PER_KWH if energy_kwh is None else energy_kwh,
            tracker.total_co2eq_g if co2eq_g is None else co2eq_g,
            prediction,
        )
        # Every rank holds the same sums (at a step log too: ``Tracker.live`` sums the open parts),
        # so all decide alike and stop at the same step; one says so.
        if tracker.reducer.rank == 0:
            decision.emit()
        self._budget_metrics = decision.metrics()
        return decision.stop and self.budget.on_exceed == "stop"

    def _prediction(self) -> dict[str, float]:
        """The tracker's prediction, its CO2eq priced at the intensity series ahead where there is one."""
        prediction = self.tracker.prediction()
        if self._series_ahead is None:
            return prediction
        return priced_by_series(prediction, self.tracker.ledger, self._series_ahead)

    @property
    def budget_stops_training(self) -> bool:
        """Has the budget (``on_exceed="stop"``) ended the run? Adapters read it after
        ``live_metrics`` and stop their framework after that step."""
        return self.budget is not None and self.budget.stopped and self.budget.on_exceed == "stop"

    def live_metrics(self, prefix: str = "") -> dict[str, float]:
        """The run so far at a framework's logging step (``Tracker.live``), with the budget judged
        on it: a budget reached mid-epoch stops training after this step (``budget_stops_training``),
        on every rank alike. On several ranks a collective (see ``Tracker.live``)."""
        values = self.tracker.live(prefix)
        if values:
            self.check_budget(energy_kwh=values[prefix + "energy_kwh_total"], co2eq_g=values[prefix + "co2eq_g_total"])
        return values

    def pause_between_epochs(self) -> float:
        """Carbon-aware training: wait while the grid is dirtier than the configured threshold.

        Adapters call this when a training epoch begins that follows another of the same call,
        never after the last one (a budget's stop, max_epochs, early stopping: no epoch follows,
        nothing to wait for); the wait is billed to the gap (``other``) like any time between
        epochs. Returns the seconds paused.
        """
        if self.carbon_aware is None or not self.running:
            return 0.0
        before = self.carbon_aware.total_paused_s
        reducer = self.tracker.reducer
        agree = (lambda mine: bool(reducer.all_gather(mine)[0])) if reducer.world_size > 1 else None
        try:
            return self.carbon_aware.maybe_pause(self.carbon, agree=agree)
        except Exception as error:
            # Raised into the pause's sleep from outside (a signal handler): the user's, and it
            # must reach the training loop, not the hook's guard. (The lookups inside fall back.)
            not_ours(error)
            raise
        finally:  # in the gap's record, so that a resume knows the delay spent since its checkpoint
            self.tracker.add_pause(self.carbon_aware.total_paused_s - before)

    def state_dict(self) -> dict:
        state = self.tracker.state_dict()
        if self.carbon_aware is not None:
            state["carbon_aware"] = self.carbon_aware.state_dict()
        budget = self._run_budget
        if budget is not None:
            state["budget"] = budget.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue the checkpointed run of ``state`` (a new attempt of it). A state that cannot be
        read warns and leaves this a new run: a framework's restore must not fail for it."""
        if not isinstance(state, dict):
            warn(f"greencallbacks: the energy state saved in the checkpoint is unreadable ({type(state).__name__}, "
                 f"not a dict); this training is measured as a new run ({self.tracker.run_id}).")
            return
        if not state or self.tracker.wrote(state):
            # Empty: saved when the state could not be taken, nothing to continue. Written by this
            # session's tracker: restored within the run that saved it, budget and carbon-aware state
            # go on as they are.
            return
        try:
            if self.carbon_aware is not None and "carbon_aware" in state:
                self.carbon_aware.load_state_dict(state["carbon_aware"])  # the delay budget spent stays spent
            if self.budget is not None and isinstance(state.get("budget"), dict):
                # Same limits: its warnings and stop go on (a stopped run resumed stops again at once).
                # Changed limits (raised to go on): judged afresh against the whole run's totals.
                self._budget_continued = self.budget.load_state_dict(state["budget"])
            elif self.budget is None and isinstance(state.get("budget"), dict):
                self._budget_kept = _saved_budget(state["budget"])
                self._budget_continued = self._budget_kept is not None
                if self._budget_kept is not None:
                    self.tracker.summary_extra["budget"] = self._kept_budget_summary
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            warn(f"greencallbacks: the budget or carbon-aware state saved in the checkpoint is unreadable "
                 f"({error!r}); they start afresh.")
        self.tracker.load_state_dict(state)
        self._delay_spent_from_records()
        self._budget_warnings_since_checkpoint()

    def _delay_spent_from_records(self) -> None:
        """The checkpoint's carbon-aware delay misses pauses made after it and before a crash; the
        run's records have them (once the tracker has resumed from them: at load, or at start)."""
        if self.carbon_aware is not None:
            self.carbon_aware.total_paused_s = max(self.carbon_aware.total_paused_s, self.tracker.ledger.paused_s)

    def _budget_warnings_since_checkpoint(self) -> None:
        """The checkpoint's budget misses the warnings given after it and before a crash. The run's
        previous summary lists them (a failing run writes one); its records give the totals each
        earlier epoch end was judged at (a process killed outright writes no summary). Once the
        tracker has resumed the run (at load, or at start); only for a budget that continues the
        checkpoint's: with changed limits the old warnings were of other limits."""
        tracker = self.tracker
        budget = self._run_budget
        if budget is None or not self._budget_continued or tracker.ledger.attempt == 0 or tracker.output_dir is None:
            return
        self._budget_continued = False  # once per resume: load and start both come here
        # Every directory the run wrote in (a resume into another output_dir: the earlier attempts'
        # summaries and records stay where they were written), oldest first.
        directories = tracker.run_directories
        for directory in directories:
            budget.recall(_previous_budget_warnings(directory, tracker.run_id, budget))
        records = read_run_records(tracker.run_id, directories)
        budget.recall_checks(_totals_at_epoch_ends(records))

    @property
    def _run_budget(self) -> Budget | None:
        """The budget this session judges, or else the one it keeps for the run (see ``_budget_kept``)."""
        return self.budget if self.budget is not None else self._budget_kept

    def _kept_budget_summary(self, summary: dict) -> dict | None:
        """The summary's ``budget`` field of a session given none (see ``_budget_kept``): the run's
        budget, its use counting this call's energy, while this attempt trains no epoch; None (left
        out) once it does: trained on without the budget, it no longer describes the run."""
        ledger = self.tracker.ledger
        trained = ledger.last.get("train")
        if self._budget_kept is None or (trained is not None and trained.attempt == ledger.attempt):
            return None
        return self._budget_kept.summary(energy_kwh=summary["energy_kwh"], co2eq_g=summary["co2eq_g"])

    def stop(self, failed: bool = False) -> None:
        """End the run: normally (a collective on several ranks) or after a failure (local only).
        Whole: a Ctrl-C inside it left the meter thread running and the summary stale."""
        if self.tracker.in_a_forked_child:
            return  # nothing of the parent's run is this process's to end (nor NVML's to call after a fork)
        with interrupts.held():
            if self._neighbours is not None and self.running:
                self._neighbours.look_at_end()
                if not failed:  # (a failed rank's stop is local: no collective)
                    self._neighbours.gather(self.tracker.reducer)
            if failed:
                self.tracker.abort()
            else:
                self.tracker.finish()


# The longest the start or the end of a run waits for NVML's list of a GPU's processes (about a
# millisecond each): a driver that hangs must not hang the run with it.
NEIGHBOURS_WAIT_S = 1.0


class GpuNeighbours:
    """Other processes running on this run's GPUs, looked for at its start and at its end (never
    per batch), each time on a thread of its own: a GPU's energy counter counts every process on
    it, so another job on the GPU is billed to this run. The summary lists them
    (``gpu_other_processes``), and the end of the run warns of them; nothing is subtracted, as
    NVML does not say how much of the GPU each process used.

    Processes of this run are no other work: this process, its parent (a launcher) and the
    ranks on this host (``pids_on_host``). NVML gives process ids of its own pid namespace; where
    this process is not among those it lists at the end (a container with a pid namespace of its
    own), whose processes they are cannot be told, and nothing is said.
    """

    def __init__(self, sensors: Iterable[Sensor], pids_on_host: Iterable[int] = ()) -> None:
        from greencallbacks.sensors.discover import gpu_process_ids

        self._read = gpu_process_ids  # None for a sensor that is no NVML GPU's
        self._gpus = [s for s in sensors if s.kind == Kind.GPU]  # held until the end's look
        self._ours = {os.getpid(), os.getppid(), *pids_on_host}
        self._seen: dict[str, dict[str, set[int] | None]] = {}  # "start"/"end" -> GPU name -> pids
        self._found: list[dict] | None = None  # made at the end's look
        self._start = self._look_on_a_thread("start", self._gpus) if self._gpus else None

    def __getstate__(self) -> dict:
        # A callback copied or pickled (ddp_spawn, a deep copy): sensors and threads stay here.
        return {**self.__dict__, "_gpus": [], "_start": None}

    def _look_on_a_thread(self, when: str, gpus: list[Sensor]) -> threading.Thread:
        thread = threading.Thread(target=self._look, args=(when, gpus),
                                  name=f"greencallbacks-gpu-processes-{when}", daemon=True)
        thread.start()
        return thread

    def _look(self, when: str, gpus: list[Sensor]) -> None:
        self._seen[when] = {s.name: self._read(s) for s in gpus}

    def look_at_end(self) -> None:
        """Look again (the run ends), and warn of any other process found. Once: the sensors
        are let go of then."""
        gpus, self._gpus = self._gpus, []
        if not gpus:
            return
        if self._start is not None:
            self._start.join(NEIGHBOURS_WAIT_S)
            self._start = None
        self._look_on_a_thread("end", gpus).join(NEIGHBOURS_WAIT_S)
        self._found = self._judge(gpus)
        if self._found:
            listed = "; ".join(f"{g['gpu']} ({g['uuid']}): process(es) {', '.join(map(str, g['pids']))} at the run's "
                               f"{' and '.join(g['seen_at'])}" for g in self._found)
            warn(f"greencallbacks: other processes used this run's GPU(s): {listed}. A GPU's energy is the whole "
                 "device's, so their share is billed to this run too (an over-count); the summary lists them.")

    def gather(self, reducer: Reducer) -> None:
        """Every rank's findings, into the summary that rank 0 writes: each rank looks at its own
        GPUs only, so another job on rank 3's GPU was warned of there and left out of the summary.
        A collective on several ranks; ranks sharing a GPU found the same processes on it."""
        if reducer.world_size <= 1:
            return
        found: dict[str, dict] = {}
        for part in reducer.all_gather(self._found or []):
            for entry in part or ():
                found.setdefault(entry["uuid"], entry)
        self._found = list(found.values())

    def _judge(self, gpus: list[Sensor]) -> list[dict]:
        """Each GPU with other processes on it: ``gpu``, ``uuid``, ``pids``, ``seen_at``."""
        start, end = self._seen.get("start", {}), self._seen.get("end", {})
        found = []
        for sensor in gpus:
            at_end = end.get(sensor.name)
            if at_end is None or os.getpid() not in at_end:
                continue  # not told (no NVML GPU, no answer), or ids of another pid namespace than this one's
            seen = {when: (pids or set()) - self._ours for when, pids in (("start", start.get(sensor.name)),
                                                                          ("end", at_end))}
            pids = sorted(seen["start"] | seen["end"])
            if pids:
                found.append({"gpu": sensor.name, "uuid": sensor.scope, "pids": pids,
                              "seen_at": [when for when in ("start", "end") if seen[when]]})
        return found

    def summary(self, _summary: dict) -> list[dict] | None:
        """The summary's ``gpu_other_processes``; None leaves it out (none found, or none could be told)."""
        self.look_at_end()  # (a run ended without the session's stop: a failure written up on its own)
        return self._found or None


def _saved_budget(state: dict) -> Budget | None:
    """The budget a checkpoint saved (``Budget.state_dict``), continued; None where it cannot be read."""
    try:
        budget = Budget(**dict(state.get("limits") or {}), on_exceed=state.get("on_exceed"), warn_at=state.get("warn_at"))
        budget.load_state_dict(state)
    except (TypeError, ValueError, AttributeError):
        return None
    return budget


def _previous_budget_warnings(directory: Path, run_id: str, budget: Budget) -> list[str]:
    """The warnings in the run's last summary (``energy-summary.json``, or the copy kept under the
    run's name when another run took that name) where it judged the same limits; none otherwise."""
    path = directory / SUMMARY_FILE
    for candidate in (path, kept_summary_path(path, run_id)):
        try:
            summary = json.loads(candidate.read_text())
            fields = summary.get("budget")
            if summary.get("run_id") == run_id and isinstance(fields, dict) and budget.same_settings(fields):
                return list(fields.get("warnings") or ())
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # a summary unreadable or damaged: the records still say something
    return []


def _totals_at_epoch_ends(records: Iterable[Record]) -> Iterator[tuple[float, float]]:
    """The run's totals (kWh, g) after each finished training phase of ``records``, in the order
    the run wrote them. A check at that epoch's end saw these or more (its validation may come
    first), so a threshold they reach was warned of then."""
    energy_kwh = co2eq_g = 0.0
    for record in sorted(records, key=lambda r: (r.seq, r.attempt)):  # the ledger's order
        energy_kwh += record.energy_kwh
        co2eq_g += record.co2eq_g
        if record.phase == "train" and not record.partial:
            yield energy_kwh, co2eq_g


def _reasons(unavailable: Sequence) -> str:
    """``name: reason (fix: ...)`` for each; a fix shared by several (RAPL's chmod for every denied
    zone, hundreds of characters) is given once, and the others point to it."""
    parts = []
    first_with_fix: dict[str, str] = {}
    for u in unavailable:
        part = f"{u.name}: {u.reason}"
        if u.fix and u.fix in first_with_fix:
            part += f" (fix: as for {first_with_fix[u.fix]})"
        elif u.fix:
            first_with_fix[u.fix] = u.name
            part += f" (fix: {u.fix})"
        parts.append(part)
    return "; ".join(parts)


def _reject_reserved_names(extra_sensors: Sequence[Sensor]) -> None:
    """Extra sensors are added to what discovery finds: a name it may give its own sensors would
    clash on some machine (gpu1 only where there are two GPUs), so every such name is refused."""
    from greencallbacks.sensors.discover import RESERVED_NAMES, is_reserved_name

    reserved = [s.name for s in extra_sensors if isinstance(s.name, str) and is_reserved_name(s.name)]
    if reserved:
        raise ValueError(
            f"extra_sensors: {reserved} would clash with the sensors greencallbacks discovers, which it may name "
            f"{RESERVED_NAMES}; give your sensors other names (e.g. 'switch', 'fan-0'), or pass sensors= to use "
            "exactly your own set"
        )


def keyword_names(function: Callable) -> tuple[str, ...]:
    """The keyword-only parameters of ``function``, read once at import: a profiler or decorator
    that later wraps the method in ``(*args, **kwargs)`` would hide them."""
    code = getattr(function, "__wrapped__", function).__code__  # through keywords_checked
    return code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]


SESSION_ARGUMENTS = frozenset(keyword_names(EnergySession.__init__)) - {"framework"}  # "framework": the adapter's to set


def reject_unknown_arguments(owner: str, session_kwargs: dict, own_arguments: Iterable[str]) -> None:
    """Fail at construction on a keyword that neither the adapter nor ``EnergySession`` takes.

    The adapters pass their extra keywords on to ``EnergySession``, whose own TypeError would name
    the session rather than the callback the user built, and not say what is valid.
    """
    unknown = [name for name in session_kwargs if name not in SESSION_ARGUMENTS]
    if not unknown:
        return
    raise unknown_keyword(owner, unknown[0], SESSION_ARGUMENTS | set(own_arguments))


def warn_two_callbacks(training: str, effect: str) -> None:
    """Two EnergyCallbacks in one ``training`` (Keras fit, HF Trainer) write the same metric names,
    and the framework keeps one value of each: ``effect`` says whose. Each ledger stays exact."""
    warn(f"greencallbacks: two EnergyCallbacks in one {training} log the same metric names, so {effect}; use one "
         "(price other grids afterwards with `greencallbacks report --compare-zones`).")


def warn_resumed_with_other_settings(saved_by: str, saved: dict, current: dict, shown: str, call: str = "training") -> None:
    """Say that a resume continues a run whose checkpoint state was saved with other settings (a
    grid corrected after a crash): the earlier records keep their grid and PUE, the new ones carry
    the new settings. Only ``output_dir`` changed (one directory per job) is not worth a word: the
    resume's own warning names the directories."""
    def apart_from_output_dir(settings: dict) -> dict:
        return {key: value for key, value in settings.items() if key != "output_dir"}

    if apart_from_output_dir(saved) != apart_from_output_dir(current):
        warn(f"greencallbacks: the checkpoint's energy state was saved by {saved_by}, with other settings than this "
             f"callback's ({shown}); this {call} continues its run, and the records from here on carry the new settings.")
