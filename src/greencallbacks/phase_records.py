"""The records of the phases closed (``_PhaseRecords``, part of ``Tracker``): each built from its
open phase (``_local_record``: energy, CO2eq at each part's intensity, uncertainty, embodied
share), summed over ranks and written whole (``_publish``), and where they are written
(``_open_writer``, ``_records_path``, ``run_directories``).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path

from greencallbacks import interrupts
from greencallbacks._version import __version__
from greencallbacks.open_phase import OpenPhase, component_uncertainty_j
from greencallbacks.records import RECORDS_FILE, Record, RecordWriter, combine_ranks, with_per_sample
from greencallbacks.units import J_PER_KWH

RANK_RECORDS_FILE = "energy-records.rank{rank}.jsonl"  # rank r's own parts of a failed multi-rank run's phases


def utc_iso(unix_s: float) -> str:
    return _dt.datetime.fromtimestamp(unix_s, _dt.timezone.utc).isoformat(timespec="milliseconds")



class _PhaseRecords:
    """Part of ``Tracker``: its methods that turn closed phases into records and write them. No
    state of its own: they read and write the tracker's (see ``Tracker.__init__``)."""

    def _take_pending(self) -> list[Record]:
        # Emptied once every record is built: a failure building one keeps them all for the next
        # boundary (or the run's end) to write, where emptied first it lost them.
        records = [self._local_record(*closed) for closed in self._pending]
        self._pending = []
        return records

    def _local_record(self, opened: OpenPhase, partial: bool, step: int | None) -> Record:
        pue = self.carbon.pue
        # Each segment's energy at the intensity of its own interval (sum of E_i x I_i); the
        # record keeps the energy-weighted mean and every source that contributed.
        co2eq_g = 0.0
        intensities = []
        for t0, t1, energy_j in opened.segments:
            intensities.append(self.carbon.intensity_between(t0, t1))
            co2eq_g += energy_j * pue / J_PER_KWH * intensities[-1].g_per_kwh
        if not intensities:
            intensities.append(self.carbon.intensity_between(opened.start_unix or 0.0, opened.start_unix or 0.0))
        intensity = intensities[-1]
        # The year of the data that priced most of the energy: a record across New Year, or priced
        # by a live source and by its fallback table of another year, said its last part's.
        energies = [energy_j for _, _, energy_j in opened.segments] or [0.0]
        year = max(zip(energies, range(len(intensities)), intensities), key=lambda part: (part[0], part[1]))[2].year
        it_energy_j = sum(c["energy_j"] for c in opened.components.values())
        facility_kwh = it_energy_j * pue / J_PER_KWH
        mean_g_per_kwh = co2eq_g / facility_kwh if facility_kwh > 0 else intensity.g_per_kwh
        source = "; ".join(dict.fromkeys(i.source for i in intensities))
        # Every part's terms, as its source: cut at each heartbeat, an epoch priced by a live API
        # and by the static table (a bucket that failed) named the last part's licence alone.
        licence = "; ".join(dict.fromkeys(term for i in intensities for term in (i.licence or "").split("; ") if term))
        components = []
        rank, host = self.reducer.rank, self._host
        for c in opened.components.values():
            out = {"name": c["name"], "kind": c["kind"], "energy_j": c["energy_j"], "method": c["method"]}
            if c["note"]:
                out["note"] = c["note"]
            if c.get("source"):
                out["source"] = c["source"]
            out["uncertainty_j"] = component_uncertainty_j(c)
            if c["name"] in self._gpu_uuids:  # which physical GPU (two ranks' gpu0 may be one GPU, or two)
                out["uuid"] = self._gpu_uuids[c["name"]]
            out["rank"] = rank
            out["host"] = host
            components.append(out)
        # hypot: a sum of squares that overflows (a sensor gone wild) must not fail the boundary.
        uncertainty_j = math.hypot(*(component_uncertainty_j(c) for c in opened.components.values()))
        record = Record(
            run_id=self.run_id,
            phase=opened.phase,
            epoch=opened.epoch,
            seq=opened.seq,
            start_time=utc_iso(opened.start_unix or 0.0),
            duration_s=opened.duration_s,
            samples=opened.samples,
            samples_counted=opened.samples_counted,
            tokens=opened.tokens or None,
            tokens_counted=opened.tokens_counted,
            it_energy_kwh=it_energy_j / J_PER_KWH,
            energy_kwh=facility_kwh,
            co2eq_g=co2eq_g,
            intensity_gco2eq_per_kwh=mean_g_per_kwh,
            intensity_source=source,
            intensity_zone=intensity.zone,
            intensity_year=year,
            intensity_licence=licence,
            intensity_is_default=intensity.is_default,
            pue=pue,
            pue_source=self.carbon.pue_source,
            energy_j_per_sample=None,
            co2eq_g_per_sample=None,
            components=components,
            uncertainty_kwh=uncertainty_j * pue / J_PER_KWH,
            step=step,
            metric_prefix=opened.metric_prefix,
            partial=partial,
            attempt=self.ledger.attempt,
            framework=self.framework,
            tool_version=__version__,
            paused_s=opened.paused_s or None,
            later_call=self._later_call,
        )
        if self.embodied_rate is not None:
            rate = self.embodied_rate
            record.embodied_co2eq_g = rate.grams * opened.duration_s
            record.embodied_co2eq_g_low = rate.range_g[0] * opened.duration_s
            record.embodied_co2eq_g_high = rate.range_g[1] * opened.duration_s
        return with_per_sample(record)

    def _publish(self, seq: int | None) -> Record | None:
        """Gather pending local records from all ranks, sum them, write, and update totals: whole,
        or not at all (a Ctrl-C between counting and writing a record lost it from the file)."""
        with interrupts.held():
            try:
                return self._publish_now(seq)
            except Exception:
                if self.reducer.world_size > 1 and self.running:
                    # A gather fails when another rank's process has died: no collective completes
                    # again. This rank writes its part (still pending) and its open phases up as a
                    # failing rank does, where they were lost; the error goes on to the caller.
                    self.abort()
                raise

    def _publish_now(self, seq: int | None) -> Record | None:
        if self.reducer.world_size > 1:
            # Pending until every rank has them: a gather that fails leaves them for `abort`.
            local = [self._local_record(*closed) for closed in self._pending]
            gathered = self.reducer.all_gather(([r.to_dict() for r in local], self._seconds_left_at_train_end))
            self._pending = []
            combined = combine_ranks([[Record.from_dict(d) for d in rank_records] for rank_records, _ in gathered])
            self._seconds_left_at_train_end = gathered[0][1]
        else:
            combined = self._take_pending()
        result = None
        for record in combined:
            self._accept(record)
            if record.seq == seq:
                result = record
        if combined and self.reducer.rank == 0 and self._writer is not None:
            self._writer.write(*combined)  # the gap and the phase: one write
        return result

    def _accept(self, record: Record) -> None:
        self.records.append(record)
        self.ledger.add(record)

    def _records_path(self) -> str | None:
        """The records file's absolute path, resolved once per output directory (resolving walks
        the path with a system call per part: ~50 us, at every Keras epoch end). A relative
        directory is resolved again when the working directory changes, as the writer's is."""
        if self.output_dir is None:
            return None
        key = self.output_dir if self.output_dir.is_absolute() else (self.output_dir, os.getcwd())
        if self._resolved_for != key:
            self._resolved_for, self._resolved = key, str((self.output_dir / RECORDS_FILE).resolve())
        return self._resolved

    def _open_writer(self) -> None:
        path = self.output_dir / RECORDS_FILE if self.output_dir is not None else None
        if self._writer is not None and self._writer.path != path:
            self._writer.close()
            self._writer = None
        if path is not None and self._writer is None:
            self._writer = RecordWriter(path)
        if self._carried and self._writer is not None:
            if self.reducer.rank == 0:  # one copy (of rank 0's share: the state a checkpoint saves is rank 0's)
                self._writer.write(*self._carried)
            self.records.extend(self._carried)  # in the ledger already (its totals)
            self._carried = []
        if self._carried_apart and self._writer is not None:
            if self.reducer.rank == 0:
                for rank, record in self._carried_apart:
                    apart = RecordWriter(self.output_dir / RANK_RECORDS_FILE.format(rank=rank))
                    apart.write(record)
                    apart.close()
            self.records.extend(record for _, record in self._carried_apart)
            self._carried_apart = []

    @property
    def run_directories(self) -> list[Path]:
        """Where the run's records are: the earlier attempts' directories where a resume chose
        another output_dir (see ``resume``), then this attempt's."""
        earlier = [Path(p).parent for p in self._records_elsewhere]
        return earlier + ([self.output_dir] if self.output_dir is not None else [])
