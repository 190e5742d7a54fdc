"""The life-cycle model of a model, built from records.

    I  = energy of one inference (J/sample), from validation / test / predict phases
    T  = energy of the trained run's training phases; per epoch T_e, per sample T / S
    D  = samples of a whole epoch (the report's count: the epochs' most common one)
    S  = samples trained: every training record's, each try of an epoch counted
    a  = training overhead factor  T / (I * S)
    A  = epochs trained again (a resume from an older checkpoint, a Keras fit with an earlier
         ``initial_epoch``): each such epoch was trained twice, and T holds both trainings
    V  = the rest of the trained run: its validation, gaps (checkpoints) and own test / predict
    CT = search (architecture / hyper-parameters) = sum over H trials of their whole runs
    LC = CT + T + V + e * I      (e = expected inferences in deployment)

T is the energy spent, so an epoch trained again counts twice in it (a note says how many); what
cites one epoch or one sample does not: T_e is the epoch's last whole training (the one the model
kept; a training again that a budget stopped after a batch replaces nothing), and T per sample is T
over the samples trained, S, so that training an epoch again, or a part of it, costs its samples
and not twice the price of one. The epochs the report classes as trained again
(``report.attempts.epochs_trained_again``) are the same here.

T stays the training phases alone, so that T per sample and a mean what the literature means; V
holds the rest of the trained run, so that it counts whole, as each trial does in CT. A sweep whose
best trial is the trained model thus has LC(e=0) equal to all its records' energy, nothing twice.

Energies are facility energy (after PUE); CO2eq follows the intensity recorded with each phase.
Embodied CO2eq (the hardware's manufacturing footprint, where the records carry it) is kept
apart: ``embodied_co2eq_g(e)`` and ``to_dict``'s ``lifecycle_embodied_co2eq_g`` are the same sum
over the embodied parts, and the two are added only in a field named as their sum.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

from greencallbacks.ledger import embodied_seconds, wall_seconds
from greencallbacks.records import Record, counted_to_heartbeat
from greencallbacks.units import J_PER_KWH

INFERENCE_PHASES = ("predict", "test", "validation")


@dataclass(frozen=True)
class LifeCycle:
    """The model's life-cycle figures. Joules and grams; ``None`` where the records cannot tell."""

    training_j: float  # T
    training_co2eq_g: float
    epochs: int  # E
    samples_per_epoch: float | None  # D (the report's whole epoch; None: never counted)
    training_j_per_epoch: tuple[float, ...]  # T_e
    inference_j_per_sample: float | None  # I
    inference_co2eq_g_per_sample: float | None
    inference_phase: str | None  # which phase I was measured in
    search_j: float = 0.0  # CT
    search_co2eq_g: float = 0.0
    search_trials: int = 0  # H
    run_total_j: float = 0.0  # the training run including evaluation and gaps: T + V
    # V: the trained run outside its training phases (validation, gaps, its own test / predict).
    run_other_j: float = 0.0
    run_other_co2eq_g: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Embodied CO2eq of training, per inference, of the search and of V; None where no record carries it.
    training_embodied_co2eq_g: float | None = None
    inference_embodied_co2eq_g_per_sample: float | None = None
    search_embodied_co2eq_g: float | None = None
    run_other_embodied_co2eq_g: float | None = None
    epochs_trained_again: int = 0  # A: epochs an attempt trained anew; T holds both trainings
    samples_trained: int | None = None  # S: every training record's samples; None where some were not counted

    @property
    def training_j_per_sample(self) -> float | None:
        """T / S: J per sample trained, an epoch trained again counting its samples twice."""
        if not self.samples_trained:
            return None
        return self.training_j / self.samples_trained

    @property
    def overhead_factor(self) -> float | None:
        """a = T / (I x S): how many inferences' worth of energy one training sample costs."""
        per_sample = self.training_j_per_sample
        if per_sample is None or not self.inference_j_per_sample:
            return None
        return per_sample / self.inference_j_per_sample

    @property
    def overhead_share(self) -> float | None:
        """The share of training energy that is not the forward pass: 1 - 1/a."""
        a = self.overhead_factor
        return None if a is None or a <= 0 else 1.0 - 1.0 / a

    @property
    def development_j(self) -> float:
        """CT + T + V: everything spent before deployment."""
        return self.search_j + self.training_j + self.run_other_j

    def energy_j(self, inferences: float) -> float | None:
        """LC = CT + T + V + e x I; None for e > 0 where I is unknown (no inference was measured):
        deployment priced at 0 J would pass CT + T + V off as the life cycle."""
        deployment = _deployment(inferences, self.inference_j_per_sample)
        return None if deployment is None else self.development_j + deployment

    def co2eq_g(self, inferences: float) -> float | None:
        """LC = CT + T + V + e x I in gCO2eq; None for e > 0 where I is unknown."""
        deployment = _deployment(inferences, self.inference_co2eq_g_per_sample)
        if deployment is None:
            return None
        return self.search_co2eq_g + self.training_co2eq_g + self.run_other_co2eq_g + deployment

    def embodied_co2eq_g(self, inferences: float) -> float | None:
        """CT + T + V + e x I for the embodied part; None when training's is not known, or for
        e > 0 when the inferences' is not."""
        deployment = _deployment(inferences, self.inference_embodied_co2eq_g_per_sample)
        search_unknown = self.search_trials > 0 and self.search_embodied_co2eq_g is None
        if self.training_embodied_co2eq_g is None or deployment is None or search_unknown:
            return None
        return (
            (self.search_embodied_co2eq_g or 0.0) + self.training_embodied_co2eq_g
            + (self.run_other_embodied_co2eq_g or 0.0) + deployment
        )

    @property
    def break_even_inferences(self) -> float | None:
        """The e at which deployment has used as much energy as the search and the trained run: (CT + T + V) / I."""
        if not self.inference_j_per_sample:
            return None
        return self.development_j / self.inference_j_per_sample

    def to_dict(self, inferences: float | None = None) -> dict:
        out = asdict(self)
        out["training_j_per_epoch"] = list(self.training_j_per_epoch)
        out["notes"] = list(self.notes)
        out.update(
            training_j_per_sample=self.training_j_per_sample,
            overhead_factor=self.overhead_factor,
            overhead_share=self.overhead_share,
            break_even_inferences=self.break_even_inferences,
        )
        if inferences is not None:
            energy_j, co2eq_g = self.energy_j(inferences), self.co2eq_g(inferences)
            out.update(
                inferences=inferences,
                lifecycle_energy_kwh=None if energy_j is None else energy_j / J_PER_KWH,
                lifecycle_co2eq_g=co2eq_g,
            )
            embodied = self.embodied_co2eq_g(inferences)
            if embodied is not None and co2eq_g is not None:
                out.update(
                    lifecycle_embodied_co2eq_g=embodied,
                    lifecycle_operational_plus_embodied_co2eq_g=co2eq_g + embodied,
                )
        return out


def _deployment(inferences: float, per_inference: float | None) -> float | None:
    """e x I: 0 for no inference, None for some where I is unknown."""
    if not inferences:
        return 0.0
    return None if per_inference is None else inferences * per_inference


def embodied_sum(records: Iterable[Record]) -> float | None:
    """The embodied CO2eq of ``records``; None when none of them carries it."""
    known = [r.embodied_co2eq_g for r in records if r.embodied_co2eq_g is not None]
    return sum(known) if known else None


def inference_cost(records: Iterable[Record]) -> tuple[float | None, float | None, str | None]:
    """I in J/sample and gCO2eq/sample, from the most deployment-like inference phase present."""
    by_phase: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.phase in INFERENCE_PHASES and r.samples > 0 and not r.partial and r.samples_counted:
            by_phase[r.phase].append(r)
    for phase in INFERENCE_PHASES:
        chosen = by_phase.get(phase)
        if chosen:
            samples = sum(r.samples for r in chosen)
            return (
                sum(r.energy_kwh for r in chosen) * J_PER_KWH / samples,
                sum(r.co2eq_g for r in chosen) / samples,
                phase,
            )
    return None, None, None


def inference_records(records: Iterable[Record]) -> list[Record]:
    """The records ``inference_cost`` takes I from (the most deployment-like inference phase)."""
    records = list(records)
    _, _, phase = inference_cost(records)
    return [r for r in records if r.phase == phase and r.samples > 0 and not r.partial and r.samples_counted]


def run_energy(records: Iterable[Record]) -> tuple[float, float]:
    """Total joules and grams of a run's records (all phases)."""
    records = list(records)
    return sum(r.energy_kwh for r in records) * J_PER_KWH, sum(r.co2eq_g for r in records)


def lifecycle(records: Sequence[Record], search: Iterable[Record] = (), run_id: str | None = None,
              unfinished: bool = False, run_summaries: Mapping[str, dict] | None = None) -> LifeCycle:
    """The life-cycle of the model trained in ``records`` (one run; ``run_id`` picks one of several).

    ``search``: the records of the sweep's trials; each ``run_id`` among them is one trial and
    its whole energy counts towards CT, except the trained run's own (it is T + V; a note says so).
    ``unfinished``: the run left no write-up (``runs.unfinished_runs``): killed outright, or still training.
    ``run_summaries``: each run's energy-summary.json beside its records (``runs.load``), which tells
    records that hold only part of the run (a resume into another directory) by the energy it counts.
    """
    runs = sorted({r.run_id for r in records})
    if run_id is None:
        if len(runs) != 1:
            raise ValueError(f"records hold {len(runs)} runs {runs}; pass run_id= to choose the trained model")
        run_id = runs[0]
    elif run_id not in runs:
        raise ValueError(f"run_id {run_id!r} not in records; runs present: {runs}")
    mine = [r for r in records if r.run_id == run_id]
    train = [r for r in mine if r.phase == "train"]
    other = [r for r in mine if r.phase != "train"]
    if not train:
        raise ValueError(f"run {run_id!r} has no training records")
    from greencallbacks.report.data import embodied_coverage, epochs_trained_again, records_lack, training_failed, whole_epoch_samples

    per_epoch: dict[int, list[Record]] = defaultdict(list)
    kept = last_trainings(train)
    for r in kept:
        # A training phase outside any epoch (a loop of one's own that trains in steps) is in T and
        # S, but no epoch: taken for one, it was E + 1 epochs and listed first as "epoch 0's" cost.
        if r.epoch is not None:
            per_epoch[r.epoch].append(r)
    epochs = sorted(per_epoch)
    again = epochs_trained_again(mine)
    # T is every joule training spent, an epoch cut short and redone after a resume included, and
    # S every sample those joules trained. D is what one epoch sees, as the report counts it: a
    # mean over the epochs took the resumed half of one for an epoch (56 for 64).
    training_j = sum(r.energy_kwh for r in train) * J_PER_KWH
    samples_trained = sum(r.samples for r in train) if all(r.samples_counted for r in train) else None
    samples_per_epoch = whole_epoch_samples(mine)
    i_j, i_g, i_phase = inference_cost(mine)
    notes = []
    if i_phase is None:
        notes.append("no inference phase (validation, test or predict) with counted samples: I, a, the break-even "
                     "and LC for e > 0 are unknown")
    elif i_phase == "validation":
        notes.append("I measured in validation loops (no test or predict records)")
    if again:
        notes.append(f"{again} epoch{'s' if again != 1 else ''} trained again from an earlier checkpoint or epoch: "
                     "T counts both trainings; per epoch is each epoch's last training, and T per sample is "
                     "T over the samples trained")
    if unfinished:
        notes.append("the run has no write-up (killed outright, or still training): T is what its records hold, "
                     + ("its open phases up to its last heartbeat" if counted_to_heartbeat(mine) else "up to its last record"))
    # Said as the report says it: a run resumed into another directory, given without the first,
    # had its T, V and LC here priced from the remnant (38 % of the run's energy) without a word.
    lacking = records_lack(mine, run_summaries)
    if lacking:
        notes += ["T, V and LC hold only what these records hold", *lacking]
    if any(r.partial for r in train):
        kept_ids = {id(r) for r in kept}
        redone = any(r.partial and id(r) not in kept_ids for r in train)
        notes.append("some training phases were cut short (partial); their energy is in T"
                     + ("; an epoch cut short and redone from its start costs its redone training per epoch"
                        if redone else ""))
    elif training_failed(mine):
        notes.append("the training ended in a failure after an epoch's record (the gap's record is partial); its energy is in V")
    if samples_trained is None:
        notes.append("some training batches could not be counted: T per sample and a are unknown")
    elif i_j and samples_trained and training_j / samples_trained < i_j:
        # 1 - 1/a is then below 0: no share of training's energy, and nothing a paper can cite as one.
        notes.append(f"a < 1: a training sample cost less than one inference in {i_phase}, so the overhead share "
                     "1 - 1/a is negative, no share of training's energy (a short inference call's start-up can weigh on I)")
    outside = sum(1 for r in train if r.epoch is None)
    if outside:
        notes.append(f"{outside} training phase{'s' if outside != 1 else ''} outside any epoch: in T and T per "
                     "sample, in no epoch's cost nor in E")
    if samples_per_epoch is None and epochs:
        notes.append("no training epoch's samples were counted whole: D is unknown")
    elif any(not r.samples_counted for r in mine):
        notes.append("some batches could not be counted; D and I come from the phases that were")
    billed = [r for r in mine if r.embodied_co2eq_g is not None]
    if billed:  # say how much, where part of the run had no figure (an attempt resumed where none was known, or with it off)
        coverage = embodied_coverage({"billed_seconds": embodied_seconds(mine), "seconds": wall_seconds(mine)})
        if coverage:
            notes.append(f"the embodied figures cover {coverage}; the rest had no figure")

    trials: dict[str, list[Record]] = defaultdict(list)
    for r in search:
        trials[r.run_id].append(r)
    if trials.pop(run_id, None) is not None:
        # The trained model is often one of the sweep's trials (its records under the same root):
        # its whole run is T + V already, and LC = CT + T + V + e x I must not hold it twice.
        notes.append(f"the trained run {run_id} is among the search records: its training phases are T, "
                     "the rest of it V, none of it in CT")
    search_j = search_g = 0.0
    # Known only where every trial carries it, as the report's embodied total: a sum over some
    # trials would pass part of CT's footprint for all of it.
    without = [run for run, trial in trials.items() if embodied_sum(trial) is None]
    search_embodied = None if without else embodied_sum(r for trial in trials.values() for r in trial)
    if without and embodied_sum(train) is not None:
        notes.append(f"{len(without)} of {len(trials)} search trials carry no embodied CO2eq (embodied off, or no "
                     "device with a published footprint): the life cycle's embodied CO2eq is unknown")
    chosen = inference_records(mine)
    # Per sample over the inferences that carry a figure: a call without one (embodied off, or a GPU
    # without a footprint) has its samples, not its grams, and divided in it lowered I's embodied part.
    chosen_billed = [r for r in chosen if r.embodied_co2eq_g is not None]
    inference_embodied = embodied_sum(chosen_billed)
    for trial in trials.values():
        j, g = run_energy(trial)
        search_j += j
        search_g += g
    other_j, other_g = run_energy(other)
    return LifeCycle(
        training_j=training_j,
        training_co2eq_g=sum(r.co2eq_g for r in train),
        epochs=len(epochs),
        samples_per_epoch=samples_per_epoch,
        training_j_per_epoch=tuple(sum(r.energy_kwh for r in per_epoch[e]) * J_PER_KWH for e in epochs),
        inference_j_per_sample=i_j,
        inference_co2eq_g_per_sample=i_g,
        inference_phase=i_phase,
        search_j=search_j,
        search_co2eq_g=search_g,
        search_trials=len(trials),
        run_total_j=run_energy(mine)[0],
        run_other_j=other_j,
        run_other_co2eq_g=other_g,
        notes=tuple(notes),
        training_embodied_co2eq_g=embodied_sum(train),
        inference_embodied_co2eq_g_per_sample=(
            inference_embodied / sum(r.samples for r in chosen_billed) if inference_embodied is not None else None
        ),
        search_embodied_co2eq_g=search_embodied,
        run_other_embodied_co2eq_g=embodied_sum(other),
        epochs_trained_again=again,
        samples_trained=samples_trained,
    )


def last_trainings(train: Sequence[Record]) -> list[Record]:
    """The training records of each epoch's last whole training: an epoch trained again
    (``report.attempts``'s rule, as the report classes it) drops what the attempts before that training
    spent on it, so that one epoch's cost is one training's, not the sum of two. So does an epoch
    cut short and redone whole by a later attempt (the report's "cut short, redone": its first
    complete training, from the epoch's start); one that a later attempt went on with from a
    checkpoint inside it ("cut short, resumed") keeps both parts. A training again stopped early
    (a budget's stop a batch after the resume) is left out: it is no epoch's cost."""
    from greencallbacks.report.data import AGAIN, FIRST, STOPPED, complete_training

    retrained_in: dict[int, int] = {}  # epoch -> the attempt of its last training anew
    stopped = set()
    for r, how in complete_training(train):
        # FIRST in a later attempt than the epoch's cut short try: a crash's part, redone from the
        # start (its 36 mJ were added to the 77 mJ of the epoch the model kept: 113 mJ for 77).
        if how in (AGAIN, FIRST):
            retrained_in[r.epoch] = r.attempt
        elif how == STOPPED:
            stopped.add(id(r))
    return [r for r in train if id(r) not in stopped
            and (r.epoch not in retrained_in or r.attempt >= retrained_in[r.epoch])]
