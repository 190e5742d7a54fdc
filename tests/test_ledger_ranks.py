"""Every joule once across ranks: two simulated hosts with two ranks each, in threads.

Each rank measures its own device; the first rank of each host also measures the host's CPU.
Ranks gather and sum at every phase end (a real collective over a barrier here), rank 0 writes.
After a normal run, after a crash (each rank writes its own unsummed records) and after a resume
of the crashed run, the records add up to exactly what all the sensors measured: each device
once, each host once.
"""

from __future__ import annotations

import json
import threading

import pytest

from greencallbacks import runs
from greencallbacks.carbon import Carbon
from greencallbacks.distributed import LocalReducer
from greencallbacks.ledger import read_run_records
from greencallbacks.meter import Meter
from greencallbacks.sensors.base import Kind
from greencallbacks.tracker import HEARTBEAT_S, SUMMARY_FILE, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

WORLD, GPU_W, CPU_W, PHASE_S = 4, 100.0, 30.0, 10.0
HOSTS = ["host-a", "host-a", "host-b", "host-b"]


class ThreadReducer:
    """``all_gather`` over threads: what torch.distributed does over processes."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.world_size, self._shared = rank, WORLD, shared
        self.measures_host = HOSTS.index(HOSTS[rank]) == rank
        self.hosts = len(set(HOSTS))

    def all_gather(self, obj):
        shared = self._shared
        shared["slots"][self.rank] = obj
        shared["barrier"].wait()
        out = list(shared["slots"])
        shared["barrier"].wait()  # nobody overwrites a slot before everyone has read
        return out

    def gather_floats(self, values):
        return self.all_gather(tuple(values))


def run_ranks(body, reducer=None, shared: dict | None = None, world: int = WORLD) -> list:
    """``body(rank, reducer)`` on each of ``world`` ranks' threads; their results. ``reducer(rank,
    shared)`` makes each rank's reducer (default: ``ThreadReducer``); a rank that raises releases the
    others from the barrier (and sets ``shared["gone"]``, where there is one); its error is raised here."""
    shared = shared if shared is not None else {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=30)}
    reducer = reducer or ThreadReducer
    results, errors = [None] * world, []

    def target(rank):
        try:
            results[rank] = body(rank, reducer(rank, shared))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread
            errors.append(error)
            if "gone" in shared:
                shared["gone"].set()
            shared["barrier"].abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def rank_tracker(rank, reducer, directory, state=None):
    clock = FakeClock()
    sensors = [ScriptedSensor(f"gpu{rank}", clock, power_w=GPU_W)]
    if reducer.measures_host:
        sensors.append(ScriptedSensor(f"cpu-{HOSTS[rank]}", clock, power_w=CPU_W, kind=Kind.CPU))
    tracker = Tracker(carbon=Carbon(intensity=200.0))
    if state is not None:
        tracker.load_state_dict(state)
    tracker.start(Meter(sensors, fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9), reducer=reducer,
                  output_dir=directory)
    tracker._host = HOSTS[rank]  # one machine simulates two
    return tracker, clock


def resumed_and_finished(rank, reducer, directory, state):
    """A rank of the resumed attempt: it trains epoch 1 again, whole, and the run ends."""
    tracker, clock = rank_tracker(rank, reducer, directory, state=state)
    tracker.begin("train", 1)
    clock.advance(PHASE_S)
    tracker.end("train")
    tracker.finish()
    return tracker


def expected_j(seconds: float) -> float:
    return seconds * (WORLD * GPU_W + len(set(HOSTS)) * CPU_W)


def test_each_device_and_each_host_is_billed_once(tmp_path):
    def body(rank, reducer):
        tracker, clock = rank_tracker(rank, reducer, tmp_path)
        for epoch in range(2):
            tracker.begin("train", epoch)
            clock.advance(PHASE_S)
            tracker.end("train")
        tracker.finish()
        return tracker

    trackers = run_ranks(body)
    records = read_run_records(trackers[0].run_id, [tmp_path])
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(expected_j(2 * PHASE_S), rel=1e-12)
    for r in records:
        assert r.ranks == WORLD and r.hosts == 2
        names = sorted(c["name"] for c in r.components)
        assert names == ["cpu-host-a", "cpu-host-b", "gpu0", "gpu1", "gpu2", "gpu3"]
    # every rank logs the same summed totals
    assert len({t.total_energy_j for t in trackers}) == 1


def test_a_crash_on_every_rank_and_a_resume_keep_every_joule_once(tmp_path):
    def crashing(rank, reducer):
        tracker, clock = rank_tracker(rank, reducer, tmp_path)
        tracker.begin("train", 0)
        clock.advance(PHASE_S)
        tracker.end("train")
        state = tracker.state_dict()
        tracker.begin("train", 1)
        clock.advance(PHASE_S / 2)
        tracker.abort()  # no collectives: rank r > 0 writes energy-records.rank{r}.jsonl
        return tracker.run_id, state

    crashed = run_ranks(crashing)
    run_id = crashed[0][0]
    assert (tmp_path / "energy-records.rank3.jsonl").exists()
    records = read_run_records(run_id, [tmp_path])
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(expected_j(1.5 * PHASE_S), rel=1e-12)
    # The summary covers every rank's records (rank 0's alone lacked the others' cut-short epoch).
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)
    # The ranks ran the cut-short epoch side by side: its seconds once, not once per rank's part
    # (the summary said 4 x 5 s; the report reads the same records so: test_report_rank_part_seconds).
    train = summary["phases"]["train"]
    assert train["duration_s"] == pytest.approx(1.5 * PHASE_S, rel=1e-12) and train["count"] == 2, train

    trackers = run_ranks(lambda rank, reducer: resumed_and_finished(rank, reducer, tmp_path, crashed[rank][1]))
    records = read_run_records(run_id, [tmp_path])
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(expected_j(2.5 * PHASE_S), rel=1e-12)
    assert trackers[0].total_energy_j == pytest.approx(sum(r.energy_j for r in records), rel=1e-12)
    assert {r.attempt for r in records} == {0, 1}
    assert trackers[0].totals["train"].duration_s == pytest.approx(2.5 * PHASE_S, rel=1e-12)
    partial = [r for r in records if r.partial]
    assert len(partial) == WORLD  # the cut-short epoch 1, once per rank, unsummed


def _checkpointed_inside_epoch_1(rank, reducer, tmp_path):
    """One rank's tracker through epoch 0 and half of epoch 1, and its checkpoint state there."""
    tracker, clock = rank_tracker(rank, reducer, tmp_path)
    tracker.begin("train", 0)
    clock.advance(PHASE_S)
    tracker.end("train")
    tracker.begin("train", 1)
    clock.advance(PHASE_S / 2)
    return tracker, clock, tracker.state_dict()  # every rank makes one; rank 0's is saved


@pytest.mark.parametrize("beat_after_checkpoint", [False, True])
def test_every_ranks_open_part_is_carried_after_a_kill(tmp_path, beat_after_checkpoint):
    """Killed outright (SIGKILL on every rank: no handler runs) inside an epoch, then resumed from
    rank 0's checkpoint: the open epoch is carried with every rank's part, from each rank's own
    heartbeat (written as the checkpoint was taken, and once a minute after), not rank 0's alone."""
    open_s = PHASE_S / 2 + (HEARTBEAT_S + 1.0 if beat_after_checkpoint else 0.0)

    def killed(rank, reducer):
        tracker, clock, state = _checkpointed_inside_epoch_1(rank, reducer, tmp_path)
        if beat_after_checkpoint:
            clock.advance(HEARTBEAT_S + 1.0)
            tracker.heartbeat()
        tracker._hold_lock(None, "")  # the process dies: the kernel frees its claim
        return state

    states = run_ranks(killed)
    # Never resumed, a report counts the open epoch as the resume would: every rank's part.
    loaded = runs.load(tmp_path)
    assert [(r.epoch, r.ranks, r.duration_s) for r in loaded.records if r.carried] == [(1, WORLD, open_s)]
    assert sum(r.it_energy_kwh for r in loaded.records) * 3.6e6 == pytest.approx(expected_j(PHASE_S + open_s), rel=1e-12)

    trackers = run_ranks(lambda rank, reducer: resumed_and_finished(rank, reducer, tmp_path, states[0]))
    run_id = trackers[0].run_id
    records = read_run_records(run_id, [tmp_path])
    carried = [r for r in records if r.carried]
    assert [(r.epoch, r.ranks, r.duration_s) for r in carried] == [(1, WORLD, open_s)]
    assert sorted(c["name"] for c in carried[0].components) == ["cpu-host-a", "cpu-host-b", "gpu0", "gpu1", "gpu2", "gpu3"]
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(expected_j(2 * PHASE_S + open_s), rel=1e-12)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)
    for tracker in trackers:  # every rank's ledger alike
        assert tracker.total_energy_j == pytest.approx(sum(r.energy_j for r in records), rel=1e-12)
    assert not list(tmp_path.glob("energy-open-*"))  # the run ended: every rank's part removed


def test_rank_0_killed_alone_keeps_its_part_of_a_phase_the_other_ranks_wrote_as_they_failed(tmp_path):
    """Rank 0 killed outright inside an epoch (the OOM killer), the other ranks failing at the next
    collective and writing their own parts of it: the resume carries rank 0's part from its
    checkpoint and heartbeat. It was dropped, the others' records of that phase taken for it (2
    CPU ranks under Lightning or HF: rank 0's share of the epoch up to the checkpoint lost)."""
    open_s = PHASE_S / 2 + HEARTBEAT_S + 1.0  # at the checkpoint, then measured further by a heartbeat

    def killed(rank, reducer):
        tracker, clock, state = _checkpointed_inside_epoch_1(rank, reducer, tmp_path)
        clock.advance(HEARTBEAT_S + 1.0)
        tracker.heartbeat()
        if rank == 0:
            tracker._hold_lock(None, "")  # the process dies: the kernel frees its claim
        else:
            tracker.abort()  # the collective it waits in fails: its own part, in its own file
        return state

    states = run_ranks(killed)
    trackers = run_ranks(lambda rank, reducer: resumed_and_finished(rank, reducer, tmp_path, states[0]))
    records = read_run_records(trackers[0].run_id, [tmp_path])
    killed_epoch = [r for r in records if (r.attempt, r.phase, r.epoch) == (0, "train", 1)]
    assert sorted(c["name"] for r in killed_epoch for c in r.components) == [
        "cpu-host-a", "cpu-host-b", "gpu0", "gpu1", "gpu2", "gpu3"]
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(expected_j(2 * PHASE_S + open_s), rel=1e-12)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)
    for tracker in trackers:
        assert tracker.total_energy_j == pytest.approx(sum(r.energy_j for r in records), rel=1e-12)
    assert not list(tmp_path.glob("energy-open-*"))


def test_a_resume_never_carries_what_its_own_other_ranks_have_written_already(tmp_path):
    """Ranks restore a checkpoint each at its own pace (Lightning: after setup): one that has gone
    on and written its part of the new attempt (a checkpoint, a heartbeat) before rank 0 resumes
    must not be read as a phase of the killed attempt begun after the checkpoint."""
    def killed(rank, reducer):
        tracker, clock = rank_tracker(rank, reducer, tmp_path)
        tracker.begin("train", 0)
        clock.advance(PHASE_S)
        state = tracker.state_dict()
        tracker._hold_lock(None, "")
        return state

    states = run_ranks(killed)
    others_done = threading.Event()

    def resumed(rank, reducer):
        tracker, clock = rank_tracker(rank, reducer, tmp_path)  # started, then restored (Lightning's order)
        if rank == 0:
            others_done.wait(30)
        tracker.load_state_dict(states[0])
        tracker.begin("train", 0)
        clock.advance(PHASE_S / 2)
        if rank > 0:
            tracker.state_dict()  # its part of the new attempt, on disk before rank 0 has resumed
            if rank == WORLD - 1:
                others_done.set()
        tracker.end("train")
        tracker.finish()
        return tracker

    trackers = run_ranks(resumed)
    records = read_run_records(trackers[0].run_id, [tmp_path])
    assert {(r.attempt, r.carried) for r in records if r.phase == "train"} == {(0, True), (1, False)}
    assert len({t.ledger.attempt for t in trackers}) == 1
    for tracker in trackers:
        assert tracker.total_energy_j == pytest.approx(sum(r.energy_j for r in records), rel=1e-12)


def test_every_rank_predicts_alike_from_rank_0s_time_left(tmp_path):
    """The time a fit has left (Lightning's Timer) is each rank's own clock, and ranks end an epoch
    milliseconds apart; a budget judged on predictions that differ could stop one rank and not
    another (a hang at the next collective). Rank 0's answer, read at the training end and shared
    by the records' gather, is what every rank predicts from."""
    def body(rank, reducer):
        tracker, clock = rank_tracker(rank, reducer, tmp_path)
        tracker.planned_epochs = 1000
        start = clock()
        tracker.seconds_left = lambda: 100.0 - (clock() - start) - rank  # each rank's clock a little later
        predictions = []
        for epoch in range(4):
            tracker.begin("train", epoch)
            clock.advance(PHASE_S)
            tracker.end("train")
            predictions.append(tracker.prediction()["energy_kwh_predicted"])
        tracker.finish()
        return predictions

    per_rank = run_ranks(body)
    assert all(p == per_rank[0] for p in per_rank)  # bit for bit
    # At epoch 3's end (40 s in), rank 0 has 60 s left: 6 epochs of 10 s, not 996.
    assert per_rank[0][3] == pytest.approx(expected_j(100.0) / 3.6e6, rel=1e-9)


def test_ranks_pause_between_epochs_as_rank_0_decides(tmp_path):
    """Rank 0 sees a dirty grid, the others a clean one (a live source fallen back to its table on
    them): every rank pauses alike, so none waits for another in a collective, and the gap's
    record says how long on every rank."""
    from greencallbacks.carbon_aware import CarbonAwarePause
    from greencallbacks.session import EnergySession

    def body(rank, reducer):
        clock = FakeClock()
        gate = CarbonAwarePause(300.0, 600.0, check_every_s=300.0, sleep=clock.advance, clock=clock)
        session = EnergySession(intensity=900.0 if rank == 0 else 100.0, carbon_aware=gate, output_dir=tmp_path,
                                sensors=[ScriptedSensor(f"gpu{rank}", clock, power_w=GPU_W)])
        session.start(reducer=reducer)
        session.tracker.begin("train", 0)
        session.tracker.end("train", samples=1)
        paused = session.pause_between_epochs()
        session.tracker.begin("train", 1)
        session.tracker.end("train", samples=1)
        session.stop()
        return paused, session.tracker.run_id

    results = run_ranks(body)
    assert [paused for paused, _ in results] == [600.0] * WORLD
    gaps = [r for r in read_run_records(results[0][1], [tmp_path]) if r.paused_s]
    assert [g.paused_s for g in gaps] == [600.0]


def gpu_rank_tracker(rank, reducer, directory, uuid):
    """A rank measuring its GPU through NVML (the fake), which other ranks may measure too."""
    from greencallbacks.sensors.discover import discover_sensors
    from tests.fakes.fake_pynvml import FakeNvml

    clock = FakeClock()
    nvml = FakeNvml(clock)
    nvml.add_gpu(uuid, power_w=GPU_W)
    sensors = discover_sensors(gpus=[0], host=False, pynvml=nvml, environ={}, clock=clock).sensors
    tracker = Tracker(carbon=Carbon(intensity=200.0), output_dir=directory)
    tracker.start(Meter(sensors, fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9), reducer=reducer)
    return tracker, clock


@pytest.mark.parametrize("layout", ["two ranks per gpu", "a gpu per rank"])
def test_ranks_sharing_a_gpu_bill_it_once_in_their_records_their_crash_and_their_live_power(tmp_path, layout):
    """Ranks 0 and 1 on one GPU, 2 and 3 on another (each rank reads its GPU's whole counter):
    every figure counts each GPU once, the ranks' own records of a crash too. Each rank on a GPU
    of its own is billed it whole, as before."""
    from tests.fakes.fake_pynvml import gpu_uuid

    per_gpu = 2 if layout == "two ranks per gpu" else 1

    def crashing(rank, reducer):
        tracker, clock = gpu_rank_tracker(rank, reducer, tmp_path, gpu_uuid(rank // per_gpu))
        tracker.begin("train", 0)
        clock.advance(PHASE_S)
        tracker.end("train")
        tracker.begin("train", 1)
        clock.advance(PHASE_S / 2)
        live = tracker.live()
        tracker.abort()  # rank r > 0 writes its own records of epoch 1
        return tracker.run_id, live["power_w"], tracker.embodied_rate.grams

    results = run_ranks(crashing)
    gpus = WORLD // per_gpu
    records = read_run_records(results[0][0], [tmp_path])
    # 2 GPUs x 100 W x 15 s = 3000 J; billed whole by each rank, it was 6000 J.
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(gpus * GPU_W * 1.5 * PHASE_S, rel=1e-3)
    assert {c["uuid"] for r in records for c in r.components} == {gpu_uuid(g) for g in range(gpus)}
    # The live power is the run's, summed over the ranks' shares: each GPU once, the same on every rank.
    assert [power for _, power, _ in results] == pytest.approx([gpus * GPU_W] * WORLD, rel=1e-3)
    # The GPU's manufacturing footprint is shared alike.
    single, _ = gpu_rank_tracker(0, LocalReducer(), None, gpu_uuid(0))
    alone = single.embodied_rate.grams
    single.finish()
    assert alone > 0 and [grams for _, _, grams in results] == pytest.approx([alone / per_gpu] * WORLD)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)
    if per_gpu == 2:
        assert [g["ranks"] for g in summary["gpus_shared"]] == [[0, 1], [2, 3]]
    else:
        assert "gpus_shared" not in summary
