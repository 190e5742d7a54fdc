import json
import math
import os
import threading
import warnings

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.records import RECORDS_FILE, read_records
from greencallbacks.sensors.base import Kind
from greencallbacks.tracker import METRIC_STEMS, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

INTENSITY = 400.0
PUE = 1.5


def setup(tmp_path=None, power_w=100.0, **kwargs):
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=power_w)
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9)
    tracker = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path, **kwargs)
    tracker.start(meter)
    return tracker, clock, sensor


def run_epochs(tracker, clock, epochs=2, train_s=10.0, val_s=2.0, gap_s=1.0, samples=100):
    for epoch in range(epochs):
        clock.advance(gap_s)
        tracker.begin("train", epoch)
        clock.advance(train_s / 2)
        tracker.add_samples(samples // 2)
        tracker.begin("validation", epoch)
        tracker.add_samples(20)
        clock.advance(val_s)
        tracker.end("validation")
        clock.advance(train_s / 2)
        tracker.add_samples(samples - samples // 2)
        tracker.end("train")
    clock.advance(gap_s)
    tracker.finish()


def test_records_partition_the_run_and_sum_to_its_total(tmp_path):
    tracker, clock, _ = setup(tmp_path)
    start = clock()
    run_epochs(tracker, clock)
    records = read_records(tmp_path)
    whole_run_j = 100.0 * (clock() - start)
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(whole_run_j)
    assert sum(r.duration_s for r in records) == pytest.approx(clock() - start)
    assert tracker.total_energy_j == pytest.approx(whole_run_j * PUE)
    assert [r.phase for r in records] == ["other", "validation", "train", "other", "validation", "train", "other"]
    seqs = [r.seq for r in records]
    assert len(set(seqs)) == len(seqs)


def test_train_record_excludes_its_validation_and_counts_its_own_samples(tmp_path):
    tracker, clock, _ = setup(tmp_path)
    run_epochs(tracker, clock, epochs=1)
    train = tracker.last["train"]
    validation = tracker.last["validation"]
    assert train.duration_s == pytest.approx(10.0)
    assert train.it_energy_kwh * 3.6e6 == pytest.approx(1000.0)
    assert validation.it_energy_kwh * 3.6e6 == pytest.approx(200.0)
    assert (train.samples, validation.samples) == (100, 20)
    assert train.energy_j_per_sample == pytest.approx(1000.0 * PUE / 100)
    assert validation.energy_j_per_sample == pytest.approx(200.0 * PUE / 20)


def test_co2_is_energy_times_pue_times_intensity(tmp_path):
    tracker, clock, _ = setup(tmp_path)
    run_epochs(tracker, clock, epochs=1)
    train = tracker.last["train"]
    assert train.energy_kwh == pytest.approx(train.it_energy_kwh * PUE)
    assert train.co2eq_g == pytest.approx(1000.0 / 3.6e6 * PUE * INTENSITY)
    assert train.intensity_gco2eq_per_kwh == INTENSITY and train.pue == PUE
    assert train.co2eq_g_per_sample == pytest.approx(train.co2eq_g / 100)


def test_metrics_use_the_shared_stems_and_totals(tmp_path):
    tracker, clock, _ = setup(tmp_path)
    run_epochs(tracker, clock, epochs=2)
    train = tracker.metrics("train")
    assert set(train) == set(METRIC_STEMS)
    assert train["energy_kwh"] == pytest.approx(1000.0 * PUE / 3.6e6)
    assert train["power_w"] == pytest.approx(100.0)
    # the train total is everything the run used so far, gaps and validation included
    assert train["energy_kwh_total"] == pytest.approx(tracker.total_energy_j / 3.6e6)
    val = tracker.metrics("validation", prefix="val_")
    assert set(val) == {"val_" + s for s in METRIC_STEMS}
    assert val["val_energy_kwh_total"] == pytest.approx(2 * 200.0 * PUE / 3.6e6)
    assert tracker.metrics("test") == {}


def test_a_metric_prefix_totals_every_record_logged_under_it_whatever_its_phase(tmp_path):
    """Regression: one prefix can name loops of two phases (HF's evaluate(ds, metric_key_prefix="test")
    beside predict(ds), whose default is test). Its total was kept by phase and prefix, so the logged
    test_energy_kwh_total went 2 s, 3 s, 7 s of energy: down at the predict. It is every record of
    the prefix, in the checkpoint's fallback totals too; records without a prefix total by phase."""
    from greencallbacks.ledger import Ledger

    tracker, clock, _ = setup(tmp_path)
    logged = []
    for phase, seconds in (("validation", 2.0), ("predict", 3.0), ("validation", 5.0)):
        tracker.begin(phase, metric_prefix="test")
        clock.advance(seconds)
        tracker.end(phase)
        logged.append(tracker.metrics(phase, prefix="test_")["test_energy_kwh_total"])
    joules_per_s = 100.0 * PUE
    assert logged == pytest.approx([s * joules_per_s / 3.6e6 for s in (2.0, 5.0, 10.0)])
    tracker.begin("predict")
    clock.advance(1.0)
    tracker.end("predict")
    assert tracker.metrics("predict", prefix="p_")["p_energy_kwh_total"] == pytest.approx(4.0 * joules_per_s / 3.6e6)
    resumed = Ledger("other")
    resumed.resume(tracker.ledger.state_dict(), records=[])  # no records file: the saved totals
    assert resumed.prefix_total("test").energy_j == pytest.approx(10.0 * joules_per_s)
    assert resumed.prefix_total("test").count == 3
    tracker.finish()


def test_per_sample_is_nan_when_no_samples_were_counted():
    tracker, clock, _ = setup()
    tracker.begin("predict")
    clock.advance(1.0)
    tracker.end("predict")
    metrics = tracker.metrics("predict")
    assert math.isnan(metrics["energy_j_per_sample"]) and metrics["energy_kwh"] > 0


def test_record_is_on_disk_as_soon_as_its_phase_ends(tmp_path):
    tracker, clock, _ = setup(tmp_path)
    tracker.begin("train", 0)
    clock.advance(3.0)
    tracker.end("train")
    assert [r.phase for r in read_records(tmp_path)] == ["train"]


def test_samples_override_at_end():
    tracker, clock, _ = setup()
    tracker.begin("test")
    tracker.add_samples(3)
    clock.advance(1.0)
    assert tracker.end("test", samples=64).samples == 64


def test_unknown_phase_is_a_value_error_naming_valid_ones():
    tracker, _, _ = setup()
    with pytest.raises(ValueError, match="train.*validation.*test.*predict"):
        tracker.begin("training")


@pytest.mark.parametrize("epoch", [-1, 1.5, "0", True])
def test_an_epoch_no_reader_takes_is_refused_at_begin(epoch):
    """Written as given before: a record with epoch -1 that report then refused, file and all."""
    tracker, _, _ = setup()
    with pytest.raises(ValueError, match="epoch must be None or an integer >= 0"):
        tracker.begin("train", epoch)


def test_a_numpy_epoch_is_written_as_a_number(tmp_path):
    np = pytest.importorskip("numpy")
    tracker, clock, _ = setup(tmp_path)
    tracker.begin("train", np.int64(3))
    clock.advance(1.0)
    tracker.end("train")
    tracker.finish()
    assert [r.epoch for r in read_records(tmp_path) if r.phase == "train"] == [3]


def test_end_without_begin_bills_nothing_and_returns_none():
    tracker, clock, _ = setup()
    clock.advance(1.0)
    assert tracker.end("validation") is None


def test_abort_writes_unfinished_phases_as_partial_and_stops(tmp_path):
    tracker, clock, _ = setup(tmp_path)
    tracker.begin("train", 0)
    clock.advance(2.0)
    tracker.begin("validation", 0)
    clock.advance(1.0)
    tracker.abort()
    records = read_records(tmp_path)
    assert [(r.phase, r.partial) for r in records] == [("validation", True), ("train", True)]
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(300.0)
    assert not tracker.running
    assert (tmp_path / "energy-summary.json").exists()


def test_resume_continues_totals_and_run_id(tmp_path):
    first, clock, _ = setup(tmp_path)
    run_epochs(first, clock, epochs=2)
    state = first.state_dict()
    second, clock2, _ = setup(tmp_path)
    second.load_state_dict(state)
    run_epochs(second, clock2, epochs=2)
    records = read_records(tmp_path)
    assert {r.run_id for r in records} == {first.run_id}
    assert second.total_energy_j == pytest.approx(sum(r.energy_kwh for r in records) * 3.6e6)
    assert second.totals["train"].count == 4
    seqs = [r.seq for r in records]
    assert len(set(seqs)) == len(seqs)  # resumed sequence numbers do not collide


def test_a_resume_reads_its_history_past_a_bad_line_of_another_run(tmp_path):
    """One line the reader refuses (another run's, in the same file) hid the whole file from the
    resume, silently: the summary fell back to the checkpoint's totals, leaving out the epoch the
    crashed attempt finished after it (1.14e-7 kWh summary for 1.80e-7 of records). Another run's
    lines are not this run's to judge: no word about them."""

    first, clock, _ = setup(tmp_path)
    clock.advance(1.0)
    first.begin("train", 0)
    clock.advance(10.0)
    first.end("train")
    state = first.state_dict()  # the checkpoint, after epoch 0
    run_epochs(first, clock, epochs=1)  # epoch "0" again stands for the epoch after the checkpoint
    with open(tmp_path / RECORDS_FILE, "a") as file:
        file.write(json.dumps({**read_records(tmp_path)[0].to_dict(), "run_id": "other", "phase": "bogus"}) + "\n")
    second, clock2, _ = setup(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second.load_state_dict(state)
    run_epochs(second, clock2, epochs=1)
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    mine = [r for r in read_records(tmp_path, on_bad_line=lambda _: None) if r.run_id == first.run_id]
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in mine), rel=1e-9)


def test_a_resume_says_it_skipped_a_bad_line_of_its_own_run(tmp_path):
    from greencallbacks.meter import EnergyWarning

    first, clock, _ = setup(tmp_path)
    run_epochs(first, clock, epochs=1)
    state = first.state_dict()
    with open(tmp_path / RECORDS_FILE, "a") as file:
        file.write(json.dumps({**read_records(tmp_path)[0].to_dict(), "phase": "bogus"}) + "\n")
    second, _, _ = setup(tmp_path)
    with pytest.warns(EnergyWarning, match="skipped .*:.*phase"):
        second.load_state_dict(state)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_samples_of_any_integer_type_are_written_as_numbers(tmp_path, kind):
    """np.count_nonzero(mask) or a torch scalar: written as the string "24" (or "tensor(14)"), which
    made the whole records file unreadable to the tool's own reader."""
    integer = pytest.importorskip(kind).int64 if kind == "numpy" else pytest.importorskip(kind).tensor
    tracker, clock, _ = setup(tmp_path)
    tracker.begin("train", 0)
    tracker.add_samples(integer(4), tokens=integer(40))
    clock.advance(1.0)
    tracker.end("train")
    tracker.begin("validation", 0)
    clock.advance(1.0)
    tracker.end("validation", samples=integer(3))
    tracker.finish()
    assert [(r.phase, r.samples) for r in read_records(tmp_path) if r.phase != "other"] == [("train", 4), ("validation", 3)]
    json.dumps(tracker.state_dict())


@pytest.mark.parametrize("samples", [-3, 2.5, "4", True, float("nan")])
def test_a_sample_count_that_is_no_count_is_refused_naming_it(samples):
    tracker, _, _ = setup()
    tracker.begin("train", 0)
    with pytest.raises(ValueError, match="samples must be an integer >= 0"):
        tracker.add_samples(samples)
    with pytest.raises(ValueError, match="samples must be an integer >= 0"):
        tracker.end("train", samples=samples)


def test_a_resume_from_a_copied_run_directory_counts_each_earlier_record_once(tmp_path):
    """`cp -r A B`, A resumed, then B resumed: the checkpoint names A's records, B holds a copy of
    them and not A's later attempt."""
    import shutil

    original, copy = tmp_path / "A", tmp_path / "B"
    first, clock, _ = setup(original)
    run_epochs(first, clock, epochs=2)
    state = first.state_dict()
    shutil.copytree(original, copy)
    on_original, clock_a, _ = setup(original)  # the original resumed first: a history the copy lacks
    on_original.load_state_dict(state)
    run_epochs(on_original, clock_a, epochs=3)
    second, clock2, _ = setup(copy)  # the user's directory: the copy
    second.load_state_dict(state)
    before = sum(r.energy_kwh for r in read_records(copy)) * 3.6e6
    assert second.total_energy_j == pytest.approx(before)  # was twice: A's records and B's copy
    assert second.totals["train"].count == 2
    run_epochs(second, clock2, epochs=1)
    assert second.total_energy_j == pytest.approx(sum(r.energy_kwh for r in read_records(copy)) * 3.6e6)
    assert [r.attempt for r in read_records(copy)][-1] == 1  # the copy's next attempt, not the original's


@pytest.mark.parametrize("layout", ["same directory", "new version beside it"])
def test_a_copy_resumed_in_the_frameworks_own_directory_goes_on_in_the_copy(tmp_path, layout):
    """The adapters give the directory (HF's output_dir, Lightning's log dir: not the user's
    choice), so a resume follows the checkpoint's records path to the run's own file: for a copy,
    the original's. The resume wrote into A and took in A's later attempt; it goes on in B."""
    import shutil

    def started(directory):
        clock = FakeClock()
        meter = Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                      wall_clock=lambda: clock() + 1.7e9)
        tracker = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE))
        tracker.start(meter, output_dir=directory)
        return tracker, clock

    first, clock = started(tmp_path / "A" / "v0")
    run_epochs(first, clock, epochs=2)
    state = first.state_dict()
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    original, clock = started(tmp_path / "A" / "v1")  # the original went on first
    original.load_state_dict(state)
    run_epochs(original, clock, epochs=1)
    a_before = read_records(tmp_path / "A" / "v0")
    copy, clock = started(tmp_path / "B" / ("v0" if layout == "same directory" else "v1"))
    copy.load_state_dict(state)
    run_epochs(copy, clock, epochs=1)
    assert read_records(tmp_path / "A" / "v0") == a_before  # the original untouched
    mine = read_records(tmp_path / "B" / "v0")
    assert [r.attempt for r in mine][-1] == 1 and copy.output_dir == tmp_path / "B" / "v0"
    assert copy.total_energy_j == pytest.approx(sum(r.energy_kwh for r in mine) * 3.6e6)


def test_another_run_under_the_same_given_id_is_no_copy_to_go_on_in(tmp_path):
    """run_id="foo" trained in O, then another run given "foo" in N; N's run resumed while the
    framework logs under O: O's "foo" is another run, not a copy of N's (same id, other records)."""

    def started(directory, power_w):
        clock = FakeClock()
        meter = Meter([ScriptedSensor("gpu0", clock, power_w=power_w)], fallback=None, clock=clock,
                      wall_clock=lambda: clock() + 1.7e9)
        tracker = Tracker(carbon=Carbon(intensity=INTENSITY), run_id="foo")
        tracker.start(meter, output_dir=directory)
        return tracker, clock

    older, clock = started(tmp_path / "O" / "v0", 50.0)
    run_epochs(older, clock, epochs=1)
    first, clock = started(tmp_path / "N" / "v0", 100.0)
    run_epochs(first, clock, epochs=2)
    state = first.state_dict()
    o_before = read_records(tmp_path / "O" / "v0")
    resumed, clock = started(tmp_path / "O" / "v1", 100.0)
    resumed.load_state_dict(state)
    run_epochs(resumed, clock, epochs=1)
    assert read_records(tmp_path / "O" / "v0") == o_before  # the older run untouched
    assert resumed.output_dir == tmp_path / "N" / "v0"
    assert resumed.totals["train"].count == 3


@pytest.mark.parametrize("run_id", ["  ", "a\nb", "tab\there", 3])
def test_bad_run_id_rejected(run_id):
    with pytest.raises(ValueError, match="run_id must be a non-empty string without control characters"):
        Tracker(run_id=run_id)


class ThreadReducer:
    """Two trackers in two threads exchanging objects through a barrier, like two ranks."""

    def __init__(self, rank, shared):
        self.rank, self.world_size, self.measures_host = rank, 2, rank == 0
        self.shared = shared

    def all_gather(self, obj):
        slots, barrier = self.shared
        slots[self.rank] = obj
        barrier.wait(timeout=10)
        out = list(slots)
        barrier.wait(timeout=10)
        return out


def test_two_ranks_sum_energy_and_samples_and_agree_on_metrics(tmp_path):
    shared = ([None, None], threading.Barrier(2))
    results = {}

    def rank_main(rank, power_w):
        clock = FakeClock()
        sensors = [ScriptedSensor(f"gpu{rank}", clock, power_w=power_w)]
        if rank == 0:
            sensors.append(ScriptedSensor("cpu", clock, power_w=50.0, kind=Kind.CPU))
        tracker = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path, run_id="ddp")
        tracker.start(Meter(sensors, fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9),
                      reducer=ThreadReducer(rank, shared))
        run_epochs(tracker, clock, epochs=1)
        results[rank] = tracker

    threads = [threading.Thread(target=rank_main, args=(r, p)) for r, p in ((0, 100.0), (1, 300.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert set(results) == {0, 1}
    assert results[0].metrics("train") == results[1].metrics("train")
    train = results[0].last["train"]
    assert train.it_energy_kwh * 3.6e6 == pytest.approx((100 + 300 + 50) * 10.0)
    assert train.samples == 200 and train.ranks == 2
    assert sorted(c["name"] for c in train.components) == ["cpu", "gpu0", "gpu1"]
    records = read_records(tmp_path)  # written once, by rank 0
    assert len([r for r in records if r.phase == "train"]) == 1


def test_prediction_is_nan_until_two_epochs_after_warmup_are_complete_then_exact_for_constant_epochs():
    tracker, clock, _ = setup()
    tracker.planned_epochs = 10
    keys = {"energy_kwh_predicted", "energy_kwh_predicted_low", "energy_kwh_predicted_high", "co2eq_g_predicted"}
    seen = []
    for epoch in range(4):
        tracker.begin("train", epoch)
        clock.advance(30.0 if epoch == 0 else 10.0)  # a slow first epoch: warm-up
        tracker.end("train")
        metrics = tracker.metrics("train")
        assert keys <= set(metrics)
        seen.append(metrics["energy_kwh_predicted"])
        clock.advance(2.0)  # the gap after each epoch (its tail) is part of what an epoch costs
    # Epoch 3's end: epochs 1 and 2 are complete (their tails are over), epoch 0 was the warm-up.
    assert all(math.isnan(v) for v in seen[:3])
    per_epoch_kwh = 100.0 * 12.0 * PUE / 3.6e6
    tail_kwh = 100.0 * 2.0 * PUE / 3.6e6
    so_far = tracker.total_energy_j / 3.6e6  # the gap after epoch 3 is still open: not yet billed
    assert seen[3] == pytest.approx(so_far + tail_kwh + 6 * per_epoch_kwh)
    # identical post-warm-up epochs: no spread, so the interval collapses onto the prediction
    tracker.begin("train", 4)
    clock.advance(10.0)
    tracker.end("train")
    m = tracker.metrics("train")
    so_far = tracker.total_energy_j / 3.6e6
    assert m["energy_kwh_predicted"] == pytest.approx(so_far + tail_kwh + 5 * per_epoch_kwh)
    assert m["energy_kwh_predicted_low"] == pytest.approx(m["energy_kwh_predicted"])
    assert m["energy_kwh_predicted_high"] == pytest.approx(m["energy_kwh_predicted"])
    assert m["co2eq_g_predicted"] == pytest.approx(m["energy_kwh_predicted"] * INTENSITY)


def test_prediction_interval_widens_with_spread():
    tracker, clock, sensor = setup()
    tracker.planned_epochs = 20
    for epoch, seconds in enumerate([10.0, 8.0, 12.0, 9.0, 11.0]):
        tracker.begin("train", epoch)
        clock.advance(seconds)
        tracker.end("train")
    m = tracker.metrics("train")
    assert m["energy_kwh_predicted_low"] < m["energy_kwh_predicted"] < m["energy_kwh_predicted_high"]
    # Complete epochs (a later one has finished, so their tails are over): 1, 2 and 3; epoch 0 is
    # the warm-up. No gaps here, so their tails are 0.
    mean_kwh = 100.0 * (8.0 + 12.0 + 9.0) / 3 * PUE / 3.6e6
    assert m["energy_kwh_predicted"] == pytest.approx(tracker.total_energy_j / 3.6e6 + 15 * mean_kwh)


def test_no_prediction_keys_without_planned_epochs():
    tracker, clock, _ = setup()
    tracker.begin("train", 0)
    clock.advance(1.0)
    tracker.end("train")
    assert set(tracker.metrics("train")) == set(METRIC_STEMS)


def session_with_pause(tmp_path, threshold, **pause_kwargs):
    """A session whose tracker runs on the scripted meter (fake clock) with a carbon-aware pause."""
    from greencallbacks.carbon_aware import CarbonAwarePause
    from greencallbacks.session import EnergySession

    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock)], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9)
    pause = CarbonAwarePause(threshold, sleep=clock.advance, clock=clock, **pause_kwargs)
    session = EnergySession(intensity=INTENSITY, pue=PUE, output_dir=tmp_path, carbon_aware=pause)
    session.tracker.start(meter)
    return session, clock


def test_carbon_aware_pause_is_billed_to_the_gap_logged_and_its_budget_survives_resume(tmp_path):
    # static 400 g/kWh: always above a 300 g/kWh threshold
    session, clock = session_with_pause(tmp_path, 300.0, max_delay_s=600.0, check_every_s=250.0)
    tracker = session.tracker
    tracker.begin("train", 0)
    clock.advance(10.0)
    tracker.end("train")
    assert session.metrics("train")["carbon_pause_s"] == 0.0
    assert session.pause_between_epochs() == pytest.approx(600.0)  # 250 + 250 + the 100 s left
    tracker.begin("train", 1)
    clock.advance(10.0)
    tracker.end("train")
    assert session.metrics("train")["carbon_pause_s"] == pytest.approx(600.0)
    (gap,) = [r for r in tracker.records if r.phase == "other"]
    assert gap.duration_s == pytest.approx(600.0) and gap.it_energy_kwh * 3.6e6 == pytest.approx(100.0 * 600.0)
    assert session.pause_between_epochs() == 0.0  # budget spent
    resumed, _ = session_with_pause(tmp_path, 300.0, max_delay_s=600.0)
    resumed.load_state_dict(session.state_dict())
    assert resumed.pause_between_epochs() == 0.0


def test_session_rejects_a_carbon_aware_that_is_not_a_pause():
    from greencallbacks.session import EnergySession

    with pytest.raises(ValueError, match="carbon_aware"):
        EnergySession(carbon_aware=300)


def test_resume_after_a_crash_counts_the_attempt_after_the_checkpoint_once(tmp_path):
    first, clock, _ = setup(tmp_path)
    for epoch in range(2):
        first.begin("train", epoch)
        clock.advance(10.0)
        first.end("train")
    checkpoint = first.state_dict()
    first.begin("train", 2)  # this epoch finishes after the checkpoint, then the run crashes
    clock.advance(10.0)
    first.end("train")
    first.begin("train", 3)
    clock.advance(5.0)
    first.abort()
    second, clock2, _ = setup(tmp_path)  # started, then restored (Lightning's order)
    second.load_state_dict(checkpoint)
    assert second.totals["train"].count == 4  # 2 from the checkpoint + epoch 2 + the partial epoch 3
    for epoch in (2, 3):
        second.begin("train", epoch)
        clock2.advance(10.0)
        second.end("train")
    second.finish()
    records = [r for r in read_records(tmp_path) if r.run_id == first.run_id]
    seqs = [r.seq for r in records]
    assert len(set(seqs)) == len(seqs)  # nothing renumbered onto the crashed attempt's records
    assert second.total_energy_j == pytest.approx(sum(r.energy_kwh for r in records) * 3.6e6)


def test_state_loaded_before_start_also_counts_the_crashed_attempt(tmp_path):
    first, clock, _ = setup(tmp_path)
    first.begin("train", 0)
    clock.advance(10.0)
    first.end("train")
    checkpoint = first.state_dict()
    first.begin("train", 1)
    clock.advance(10.0)
    first.end("train")
    first.abort()
    clock2 = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock2, power_w=100.0)], fallback=None, clock=clock2,
                  wall_clock=lambda: clock2() + 1.7e9)
    second = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path)
    second.load_state_dict(checkpoint)  # Keras and HF restore before starting
    second.start(meter)
    assert second.totals["train"].count == 2
    second.begin("train", 1)
    clock2.advance(10.0)
    second.end("train")
    second.finish()
    records = read_records(tmp_path)
    assert len({r.seq for r in records}) == len(records)
    assert second.total_energy_j == pytest.approx(sum(r.energy_kwh for r in records) * 3.6e6)


def test_a_relative_output_dir_is_resolved_again_when_the_working_directory_changes(tmp_path, monkeypatch):
    """The checkpoint's records path is resolved once per directory (it is asked at every Keras
    epoch end), but a relative one follows the working directory, as the records writer does."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    tracker = Tracker(output_dir="logs")
    first = tracker.state_dict()["records_path"]
    assert first == str(tmp_path.resolve() / "a" / "logs" / RECORDS_FILE)
    assert tracker.state_dict()["records_path"] == first
    monkeypatch.chdir(tmp_path / "b")
    assert tracker.state_dict()["records_path"] == str(tmp_path.resolve() / "b" / "logs" / RECORDS_FILE)


@pytest.mark.parametrize("damage", [
    {"seq": "abc"}, {"attempt": None}, {"records_path": 5}, {"run_id": [1]}, {"run_id": ""}, None, "text",
])
@pytest.mark.parametrize("started_first", [True, False], ids=["restored-after-start", "loaded-before-start"])
def test_an_unreadable_checkpoint_state_warns_and_measures_a_new_run(tmp_path, damage, started_first):
    """A framework's restore must not fail on our entry in a checkpoint (edited, damaged, or from
    an unknown version): one warning, the run measured as a new one, its records consistent."""
    from greencallbacks.meter import EnergyWarning
    from greencallbacks.session import EnergySession

    first, clock, _ = setup(tmp_path / "first")
    run_epochs(first, clock)
    state = first.state_dict() if isinstance(damage, dict) else damage
    if isinstance(damage, dict):
        state.update(damage)
    first.finish()
    session = EnergySession(intensity=100.0, sensors=[ScriptedSensor("gpu0", clock, power_w=100.0)],
                            output_dir=tmp_path / "second")
    with pytest.warns(EnergyWarning, match="unreadable"):
        if started_first:  # Lightning's order
            session.start()
        session.load_state_dict(state)
        session.start()  # Keras' and HF's order: the state is read here
    new_run = session.tracker.run_id
    assert new_run != first.run_id and session.tracker.ledger.attempt == 0
    run_epochs(session.tracker, clock)
    session.stop()
    records = [r for r in read_records(tmp_path / "second") if r.run_id == new_run]
    assert [r.epoch for r in records if r.phase == "train"] == [0, 1]
    assert len({r.seq for r in records}) == len(records)
    assert sum(r.energy_j for r in records) == pytest.approx(session.tracker.total_energy_j, rel=1e-12)


def test_a_new_run_under_a_run_id_already_recorded_there_takes_a_free_one(tmp_path):
    """A run_id given to a callback that fits twice (or a script run again): the second run added
    its records to the first's, seq numbers repeated, and each summary covered half of them."""
    import warnings

    ids, said = [], []
    for _ in range(3):
        tracker, clock, _ = setup(tmp_path, run_id="resnet-seed1")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_epochs(tracker, clock, epochs=1)
        ids.append(tracker.run_id)
        said.append(sum("already has records" in str(w.message) for w in caught))
    assert ids == ["resnet-seed1", "resnet-seed1-2", "resnet-seed1-3"] and said == [0, 1, 1]
    for run_id in ids:
        seqs = [r.seq for r in read_records(tmp_path) if r.run_id == run_id]
        assert seqs and len(set(seqs)) == len(seqs)
    # A resume continues the given run, whichever order the framework restores in; nothing said.
    crashed, clock, _ = setup(tmp_path / "resumed", run_id="exp")
    crashed.begin("train", 0)
    clock.advance(1.0)
    checkpoint = crashed.state_dict()
    crashed.abort()
    resumed, clock, _ = setup(tmp_path / "resumed", run_id="exp")  # started, then restored (Lightning)
    resumed.load_state_dict(checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_epochs(resumed, clock, epochs=1)
    assert resumed.run_id == "exp" and resumed.ledger.attempt == 1
    assert not [w for w in caught if "already has records" in str(w.message)]
    # Restored before start (Keras, HF): start claimed the given run, and the resume took its own
    # claim for another process's; a run of its own, seq numbers repeated, summary short.
    checkpoint = resumed.state_dict()
    resumed.abort()
    clock = FakeClock()
    again = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path / "resumed", run_id="exp")
    again.load_state_dict(checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                          wall_clock=lambda: clock() + 1.7e9))
        run_epochs(again, clock, epochs=1)
        again.finish()
    assert not [w for w in caught if "measured by another process" in str(w.message)]
    assert again.run_id == "exp" and again.ledger.attempt == 2
    records = [r for r in read_records(tmp_path / "resumed") if r.run_id == "exp"]
    assert len({r.seq for r in records}) == len(records)
    summary = json.loads((tmp_path / "resumed" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)


def test_a_run_measured_by_another_session_now_is_not_taken_over(tmp_path):
    """An evaluation job that continues a run from its checkpoint while the run still trains (or
    two fits resumed from one checkpoint at once): each numbered records from its own view, seq
    numbers repeated and neither summary covered the run. The second is a run of its own; once the
    first has finished, the run is free to continue."""
    import warnings

    training, clock, _ = setup(tmp_path)
    training.begin("train", 0)
    clock.advance(1.0)
    checkpoint = training.state_dict()
    evaluation, clock2, _ = setup(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluation.load_state_dict(checkpoint)
    assert evaluation.run_id != training.run_id and evaluation.ledger.attempt == 0
    assert [w for w in caught if "being measured by another process" in str(w.message)]
    evaluation.begin("validation", 0)
    clock2.advance(1.0)
    evaluation.end("validation")
    evaluation.finish()
    clock.advance(1.0)
    training.end("train")
    training.finish()
    for tracker in (training, evaluation):
        seqs = [r.seq for r in read_records(tmp_path) if r.run_id == tracker.run_id]
        assert len(set(seqs)) == len(seqs)
        assert tracker.total_energy_j == pytest.approx(
            sum(r.energy_kwh for r in read_records(tmp_path) if r.run_id == tracker.run_id) * 3.6e6)
    later, _, _ = setup(tmp_path)
    later.load_state_dict(checkpoint)
    assert later.run_id == training.run_id and later.ledger.attempt == 1
    later.finish()


def test_two_sessions_on_one_given_run_id_at_once_each_get_a_run_of_their_own(tmp_path):
    """Under a given run_id, the second of two fits started at once, or of two resumes of one
    checkpoint (restored before start, as Keras and HF do), was told it was a run of its own but
    kept the id: both numbered records of "exp" from 0, and neither summary covered them."""
    import warnings

    def started(state=None):
        clock = FakeClock()
        tracker = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path, run_id="exp")
        if state is not None:
            tracker.load_state_dict(state)
        tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                            wall_clock=lambda: clock() + 1.7e9))
        return tracker, clock

    first, clock = started()
    first.begin("train", 0)
    clock.advance(1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second, clock2 = started()  # a fresh fit, started while the first runs
        run_epochs(second, clock2, epochs=1)
        second.finish()
    assert second.run_id == "exp-2"
    assert [w for w in caught if "'exp' is being measured by another process now" in str(w.message)]
    checkpoint = first.state_dict()
    first.abort()
    resumed, clock = started(checkpoint)  # resumes exp, and goes on measuring it
    assert resumed.run_id == "exp" and resumed.ledger.attempt == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, clock3 = started(checkpoint)  # the same checkpoint resumed at the same time
        run_epochs(again, clock3, epochs=1)
        again.finish()
    assert again.run_id == "exp-3" and [w for w in caught if "being measured by another process" in str(w.message)]
    run_epochs(resumed, clock, epochs=1)
    resumed.finish()
    for tracker in (second, resumed, again):
        records = [r for r in read_records(tmp_path) if r.run_id == tracker.run_id]
        assert len({(r.seq) for r in records}) == len(records), tracker.run_id
        assert tracker.total_energy_j == pytest.approx(sum(r.energy_kwh for r in records) * 3.6e6)


def test_a_second_run_in_one_directory_keeps_the_first_runs_summary_beside_its_own(tmp_path):
    """A notebook's fit run again on one Trainer writes a new run into the same directory: its
    summary replaced the first run's, silently. The first is kept as energy-summary-<run id>.json;
    when the first run continues (a resume) and writes the name again, its kept copy goes."""
    from greencallbacks.tracker import SUMMARY_FILE

    first, clock, _ = setup(tmp_path)
    run_epochs(first, clock, epochs=1)
    first_summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    second, clock, _ = setup(tmp_path)
    run_epochs(second, clock, epochs=2)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["run_id"] == second.run_id
    kept = tmp_path / f"energy-summary-{first.run_id}.json"
    assert json.loads(kept.read_text()) == first_summary
    assert first_summary["energy_kwh"] == pytest.approx(
        sum(r.energy_kwh for r in read_records(tmp_path) if r.run_id == first.run_id), rel=1e-12)
    resumed, clock, _ = setup(tmp_path)
    resumed.load_state_dict(first.state_dict())
    run_epochs(resumed, clock, epochs=1)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["run_id"] == first.run_id
    assert not kept.exists() and (tmp_path / f"energy-summary-{second.run_id}.json").exists()


def test_run_ids_alike_as_file_names_keep_two_summaries(tmp_path):
    """exp/1 and exp-1 gave one kept name: the second run moved the first's summary there, then
    deleted it as its own out-of-date copy."""
    from greencallbacks.tracker import SUMMARY_FILE

    for run_id in ("exp/1", "exp-1", "exp 1"):
        tracker, clock, _ = setup(tmp_path, run_id=run_id)
        run_epochs(tracker, clock, epochs=1)
    kept = sorted(tmp_path.glob("energy-summary-*.json"))
    assert len(kept) == 2 and json.loads((tmp_path / SUMMARY_FILE).read_text())["run_id"] == "exp 1"
    assert {json.loads(p.read_text())["run_id"] for p in kept} == {"exp/1", "exp-1"}


def test_records_name_what_each_component_was_read_from(tmp_path):
    """The paper's sentence (report.method_sentence) takes each component's source from the records."""
    from greencallbacks.sensors.estimate import ConstantPowerSensor

    clock = FakeClock()
    sensors = [ScriptedSensor("gpu0", clock, power_w=100.0), ConstantPowerSensor("switch", 20.0, kind=Kind.CPU, clock=clock)]
    tracker = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path)
    tracker.start(Meter(sensors, fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    run_epochs(tracker, clock, epochs=1)
    tracker.finish()
    [train] = [r for r in read_records(tmp_path) if r.phase == "train"]
    sources = {c["name"]: c.get("source") for c in train.components}
    assert sources == {"gpu0": None, "switch": "a declared constant power"}  # the scripted sensor says none


def test_a_checkpoint_keeps_what_the_forecast_needs_not_every_epoch_and_resumes_to_the_same_forecast(tmp_path):
    """The checkpoint's state held one entry per epoch that ever ran: a Keras fit writes it at each
    epoch end, and 3000 tiny epochs spent 69 % of their time on it. It holds the forecast's sums
    and the last epochs now; a resume without the records file forecasts as the run did."""
    from greencallbacks.ledger import Ledger

    tracker, clock, _ = setup(tmp_path / "long")
    tracker.planned_epochs = 400
    run_epochs(tracker, clock, epochs=300, train_s=1.0, val_s=0.5, gap_s=0.1)
    state = json.loads(json.dumps(tracker.state_dict()))
    assert len(state["epochs"]) <= 3
    resumed = Ledger("x")
    resumed.resume(state, records=[])  # the records file gone: the state stands in
    original = tracker.ledger
    assert resumed.stats.n == original.stats.n > 290
    assert resumed.stats.cost == pytest.approx(original.stats.cost, rel=1e-12)
    assert resumed.stats.seconds == pytest.approx(original.stats.seconds, rel=1e-12)
    assert resumed.steps_per_epoch == original.steps_per_epoch
    assert resumed.last_finished_epoch == original.last_finished_epoch == 299


def test_the_run_ids_beside_a_run_are_read_from_each_line_as_json_would(tmp_path):
    """Ids read without decoding whole records (a sweep's file is hundreds of MB) are the ids a full
    read finds: escaped quotes and backslashes, other Unicode, key order and spacing of other writers."""
    from greencallbacks.ledger import run_ids_in

    first, clock, _ = setup(tmp_path, run_id='a "quoted" \\ id')
    run_epochs(first, clock, epochs=1)
    second, clock, _ = setup(tmp_path, run_id="essai-été-𝛼")
    run_epochs(second, clock, epochs=1)
    record = read_records(tmp_path)[0].to_dict()
    reordered = {"seq": 0, **{k: v for k, v in record.items() if k != "run_id"}, "run_id": "other writer"}
    with open(tmp_path / RECORDS_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps(reordered, indent=None, separators=(", ", " : "), ensure_ascii=True) + "\n")
    found = run_ids_in(tmp_path)
    assert found == {r.run_id for r in read_records(tmp_path)} == {'a "quoted" \\ id', "essai-été-𝛼", "other writer"}


def test_an_estimate_keeps_its_stated_uncertainty_however_often_its_phase_is_cut(tmp_path):
    """A training epoch cut by validations (or checkpoint writes) into segments: an estimate's
    error is the model's, the same in each segment, so it adds up (+-50 %), where it said
    50 %/sqrt(segments) (24 % with four)."""
    from greencallbacks.sensors.base import Method

    clock = FakeClock()
    cpu = ScriptedSensor("cpu", clock, power_w=20.0, kind=Kind.CPU, method=Method.ESTIMATED)
    gpu = ScriptedSensor("gpu0", clock, power_w=100.0, update_period_s=0.1)
    tracker = Tracker(carbon=Carbon(intensity=INTENSITY), output_dir=tmp_path)
    tracker.start(Meter([gpu, cpu], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    tracker.begin("train", 0)
    for _ in range(3):  # three validations inside the epoch: four segments of training
        clock.advance(1.0)
        tracker.begin("validation", 0)
        clock.advance(0.5)
        tracker.end("validation")
    clock.advance(1.0)
    record = tracker.end("train")
    tracker.finish()
    (part,) = [c for c in record.components if c["name"] == "cpu"]
    assert part["uncertainty_j"] == pytest.approx(0.5 * part["energy_j"])
    (counter,) = [c for c in record.components if c["name"] == "gpu0"]
    assert counter["uncertainty_j"] == pytest.approx(0.1 * 100.0 * 2)  # a counter's, at 4 segments: in quadrature


def test_a_run_whose_records_could_not_be_written_says_so_at_its_end(tmp_path):
    """output_dir became a file after construction: every write failed, the first warning said the
    records would be written later, and the run ended saying nothing while they never were."""
    from greencallbacks.meter import EnergyWarning

    out = tmp_path / "out"
    tracker, clock, _ = setup(out)
    out.write_text("a file where the records were to go")
    with pytest.warns(EnergyWarning) as caught:
        run_epochs(tracker, clock, epochs=1)
    said = [str(w.message) for w in caught]
    assert any("kept in memory" in m for m in said)  # the writer's, at the first phase end
    (ending,) = [m for m in said if "NOT written" in m]
    assert tracker.run_id in ending and str(out / RECORDS_FILE) in ending and "nor its summary" in ending


def test_records_in_the_file_but_not_yet_confirmed_on_disk_are_not_called_unwritten(tmp_path, monkeypatch):
    """close() is False too while a slow fsync goes on in the background (it warns of that itself):
    the lines are in the file, and the end of the run must not say they were not written."""
    import warnings

    from greencallbacks.records import RecordWriter

    closed = RecordWriter.close
    monkeypatch.setattr(RecordWriter, "close", lambda self: closed(self) and False)
    tracker, clock, _ = setup(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_epochs(tracker, clock, epochs=1)
    assert not [w for w in caught if "NOT written" in str(w.message)]
    assert len((tmp_path / RECORDS_FILE).read_text().splitlines()) == 4  # gap, validation, train, gap


def test_a_summary_that_could_not_be_written_is_said_once_with_the_records_complete(tmp_path, monkeypatch):
    """A full disk took the records' last lines (the file's last block had room) but not the
    summary, a new file: the run ended without a word, its summary missing."""
    import errno
    import warnings

    from greencallbacks import records as records_module
    from greencallbacks.tracker import SUMMARY_FILE

    real_replace = os.replace

    def full_disk(source, target, *args, **kwargs):
        if os.path.basename(target) == SUMMARY_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(records_module.os, "replace", full_disk)
    tracker, clock, _ = setup(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_epochs(tracker, clock, epochs=1)
    said = [str(w.message) for w in caught if "greencallbacks" in str(w.message)]
    (ending,) = [m for m in said if "summary" in m]
    assert "NOT written" in ending and str(tmp_path / SUMMARY_FILE) in ending and tracker.run_id in ending
    assert f"records are complete in {tmp_path / RECORDS_FILE}" in ending
    assert not (tmp_path / SUMMARY_FILE).exists() and not list(tmp_path.glob("*.tmp"))
    assert len(read_records(tmp_path)) == 4  # gap, validation, train, gap


def test_an_overflowing_uncertainty_does_not_fail_the_boundary(tmp_path):
    """A sensor gone wild (cpu_tdp_w=1e308 did it): the sum of squared uncertainties overflowed
    (OverflowError at every boundary: no record, no summary). It is summed without overflow now."""
    from greencallbacks.sensors.base import Method

    clock = FakeClock()
    cpu = ScriptedSensor("cpu", clock, power_w=1e300, kind=Kind.CPU, method=Method.ESTIMATED)
    tracker = Tracker(carbon=Carbon(intensity=INTENSITY), output_dir=tmp_path)
    tracker.start(Meter([cpu], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9))
    run_epochs(tracker, clock, epochs=1)
    train = tracker.last["train"]
    assert math.isfinite(train.uncertainty_kwh) and train.uncertainty_kwh == pytest.approx(0.5 * train.it_energy_kwh)
    assert (tmp_path / "energy-summary.json").exists()


def test_a_long_run_ids_summary_is_kept_under_a_name_that_fits(tmp_path):
    """A run id of ~240 characters made the kept summary's file name too long: the rename failed,
    unsaid, and the next run's summary replaced the earlier run's. Long ids are cut, with a hash
    of the whole, so two ids alike in their first characters keep two summaries."""
    from greencallbacks.tracker import SUMMARY_FILE

    long_ids = ["a" * 240 + "-one", "a" * 240 + "-two"]
    for run_id in [*long_ids, "short"]:
        tracker, clock, _ = setup(tmp_path, run_id=run_id)
        run_epochs(tracker, clock, epochs=1)
    kept = sorted(tmp_path.glob("energy-summary-*.json"))
    assert {json.loads(p.read_text())["run_id"] for p in kept} == set(long_ids)
    assert all(len(p.name) < 200 for p in kept)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["run_id"] == "short"


def test_a_name_that_could_be_made_before_is_kept_as_it_was():
    """A 150-character id's summary kept by earlier versions under its whole name: a resume must
    find it (its budget warnings) and replace it, not leave a stale copy under the old name."""
    from pathlib import Path

    from greencallbacks.summaries import kept_summary_path

    run_id = "b" * 150
    assert kept_summary_path(Path("d/energy-summary.json"), run_id).name == f"energy-summary-{run_id}.json"
    assert len(kept_summary_path(Path("d/energy-summary.json"), "c" * 240).name) <= 255


def test_a_summary_that_cannot_be_kept_is_said_before_it_is_replaced(tmp_path, monkeypatch):
    """Any other failure to keep the earlier run's summary replaced it silently."""
    from greencallbacks.meter import EnergyWarning
    from greencallbacks.tracker import SUMMARY_FILE

    first, clock, _ = setup(tmp_path, run_id="first")
    run_epochs(first, clock, epochs=1)
    real_replace = os.replace

    def refuse_to_keep(source, target):
        if "energy-summary-" in str(target):
            raise PermissionError(13, "denied", str(target))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", refuse_to_keep)
    second, clock, _ = setup(tmp_path, run_id="second")
    with pytest.warns(EnergyWarning, match="could not keep run 'first'"):
        run_epochs(second, clock, epochs=1)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["run_id"] == "second"


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_output_dir_that_is_a_file_is_refused_at_construction(tmp_path, where):
    """Accepted before: every write of the run failed, and its records and summary were lost."""
    a_file = tmp_path / "taken"
    a_file.write_text("")
    output_dir = a_file if where == "file" else a_file / "logs"
    with pytest.raises(ValueError, match=r"output_dir .*not a directory"):
        Tracker(output_dir=output_dir)
    Tracker(output_dir=tmp_path / "not" / "made" / "yet")  # made at the first record
    assert not (tmp_path / "not").exists()


def _finish_runs_at_once(directory, trials, barrier, run_ids):
    """One process's runs, trial after trial: each writes its summary into ``directory/<trial>``
    the moment every process is ready to (``barrier``)."""
    for trial in range(trials):
        tracker, clock, _ = setup(directory / str(trial))
        tracker.begin("train", 0)
        clock.advance(5.0)
        tracker.end("train")
        clock.advance(1.0)
        barrier.wait()
        tracker.finish()
        run_ids.put((trial, tracker.run_id))


def test_runs_ending_at_once_in_one_directory_each_keep_their_summary_under_their_own_name(tmp_path):
    """Keeping another run's summary is read, rename, write: two processes doing it at once moved
    one's summary under the other's name, or replaced it, and a summary was lost (a sweep's runs
    sharing a directory, ending together)."""
    import multiprocessing

    from greencallbacks.tracker import SUMMARY_FILE

    processes, trials = 4, 8
    context = multiprocessing.get_context("spawn")  # no copy of pytest's threads and state
    barrier, run_ids = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_finish_runs_at_once, args=(tmp_path, trials, barrier, run_ids))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    ended = [run_ids.get(timeout=120) for _ in range(processes * trials)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    lost = []
    for trial in range(trials):
        directory = tmp_path / str(trial)
        latest = json.loads((directory / SUMMARY_FILE).read_text())["run_id"]
        for run_id in (r for t, r in ended if t == trial):
            kept = directory / f"energy-summary-{run_id}.json"
            if run_id != latest and not (kept.exists() and json.loads(kept.read_text())["run_id"] == run_id):
                lost.append((trial, run_id))
        misfiled = [p.name for p in directory.glob("energy-summary-*.json")
                    if p.name != f"energy-summary-{json.loads(p.read_text())['run_id']}.json"]
        assert not misfiled, misfiled
    assert not lost, f"summaries lost or misfiled: {lost}"


@pytest.mark.skipif(os.name != "posix", reason="flock: POSIX")
def test_a_summary_lock_held_too_long_is_said_and_does_not_hold_up_the_runs_end(tmp_path, monkeypatch):
    """A process stuck while it holds the directory's summaries must not hang every other run's end."""
    import fcntl

    from greencallbacks import summaries
    from greencallbacks.meter import EnergyWarning

    monkeypatch.setattr(summaries, "SUMMARY_LOCK_WAIT_S", 0.2)
    tracker, clock, _ = setup(tmp_path)
    holder = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.warns(EnergyWarning, match="writing its summary .* for over 0.2 s"):
            run_epochs(tracker, clock, epochs=1)  # waiting for ever instead: pytest-timeout's
    finally:
        os.close(holder)
    assert json.loads((tmp_path / "energy-summary.json").read_text())["run_id"] == tracker.run_id


def _measured_in_threads(tmp_path, threads_per_run):
    """Trackers started by each of ``len(threads_per_run)`` threads, all training at once; the
    warnings said."""
    import warnings

    started = threading.Barrier(len(threads_per_run))
    trackers = {}

    def measure(name, count):
        ones = [setup(tmp_path / name / str(i))[:2] for i in range(count)]
        trackers[name] = [tracker for tracker, _ in ones]
        started.wait()  # every tracker runs before any trains
        for tracker, _ in ones:
            tracker.begin("train", 0)
        started.wait()  # and every one trains before any ends
        for tracker, clock in ones:
            clock.advance(1.0)
            tracker.end("train")
            tracker.finish()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=measure, args=(str(n), count)) for n, count in enumerate(threads_per_run)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    said = [str(w.message) for w in caught if "measured at once in this process" in str(w.message)]
    return said, trackers


def test_two_runs_measured_at_once_from_two_threads_are_said_to_count_the_process_twice(tmp_path):
    """Two fits in a thread pool, each with its own callback: each billed the whole process's CPU
    and memory, their sum ~1.9 times the energy spent, and nothing said so."""
    said, trackers = _measured_in_threads(tmp_path, [1, 1])
    assert len(said) == 1, said
    assert said[0].startswith("greencallbacks: ") and "counts that energy twice" in said[0]
    assert all(repr(one.run_id) in said[0] for ones in trackers.values() for one in ones)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # those runs have ended: a run now measures alone
        later, _, _ = setup(tmp_path / "later")
        later.begin("train", 0)
    later.finish()


def test_a_thread_pools_trials_measured_at_once_are_said_once_per_pair_of_threads(tmp_path):
    """optuna n_jobs=4: every trial a new run beside the other threads' new runs. Said once per
    pair of runs, 40 trials gave 39 warnings of 400 characters."""
    import warnings

    both = threading.Barrier(2)

    def trials(name):
        for trial in range(3):
            tracker, clock, _ = setup(tmp_path / name / str(trial))
            both.wait()  # the other thread's trial runs too
            tracker.begin("train", 0)
            both.wait()
            clock.advance(1.0)
            tracker.end("train")
            tracker.finish()
            both.wait()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = [threading.Thread(target=trials, args=(name,)) for name in "ab"]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    said = [str(w.message) for w in caught if "measured at once in this process" in str(w.message)]
    assert len(said) == 1, said


def test_two_trackers_started_in_one_thread_are_one_training_and_not_said(tmp_path):
    """Two callbacks in one Trainer price one training twice: documented, and no double count."""
    said, _ = _measured_in_threads(tmp_path, [2])
    assert said == []


def test_a_loop_of_ones_own_in_with_blocks_finishes_the_run_or_writes_it_up_as_cut_short(tmp_path):
    """`with tracker.start(meter)` and `with tracker.phase(...)`: a normal exit finishes the run
    (summary written, meter stopped); an exception inside a phase writes that phase as partial and
    the run's summary, and the exception goes on."""
    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    with Tracker(output_dir=tmp_path / "ok", run_id="ok").start(meter) as tracker:
        for epoch in range(2):
            with tracker.phase("train", epoch):
                clock.advance(10.0)
                tracker.add_samples(32)
    assert not tracker.running
    records = read_records(tmp_path / "ok" / RECORDS_FILE)
    assert [(r.phase, r.epoch, r.samples, r.partial) for r in records if r.phase == "train"] == \
        [("train", 0, 32, False), ("train", 1, 32, False)]
    summary = json.loads((tmp_path / "ok" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)

    clock2 = FakeClock()
    meter2 = Meter([ScriptedSensor("gpu0", clock2, power_w=100.0)], fallback=None, clock=clock2,
                   wall_clock=lambda: clock2() + 1.7e9)
    with pytest.raises(KeyboardInterrupt):
        with Tracker(output_dir=tmp_path / "cut", run_id="cut").start(meter2) as tracker:
            with tracker.phase("train", 0):
                clock2.advance(4.0)
                tracker.add_samples(8)
                raise KeyboardInterrupt
    assert not tracker.running
    records = read_records(tmp_path / "cut" / RECORDS_FILE)
    train = [r for r in records if r.phase == "train"]
    assert [(r.samples, r.partial) for r in train] == [(8, True)]
    assert train[0].energy_kwh == pytest.approx(4.0 * 100.0 / 3.6e6, rel=1e-9)
    assert (tmp_path / "cut" / "energy-summary.json").exists()


def test_a_phase_begun_before_the_tracker_started_is_said_once_not_lost_silently(tmp_path):
    tracker = Tracker(output_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"Tracker.begin\('train'\) before start\(meter\)"):
        tracker.begin("train", 0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.begin("train", 1)  # once per tracker
        with pytest.raises(RuntimeError, match="start"):
            with tracker:
                pass


def test_a_resume_into_another_output_dir_says_where_the_earlier_records_are(tmp_path):
    """fit(ckpt_path=...) with a callback given another output_dir (one directory per job): the
    attempt writes there, its earlier records stay where the run began, and the summary there is
    the whole run's. That summary said 2.84e-7 kWh beside records of 0.90e-7, and `report` of that
    directory gave 0.90e-7 as the whole run, unsaid. Said at the resume, in the summary, in the report."""
    from greencallbacks import report

    first, clock, _ = setup(tmp_path / "X")
    run_epochs(first, clock, epochs=2)
    state = first.state_dict()
    second, clock2, _ = setup(tmp_path / "Y")
    with pytest.warns(UserWarning, match=r"earlier attempts' records stay in .*X.*greencallbacks report"):
        second.load_state_dict(state)
    run_epochs(second, clock2, epochs=1)
    x_records, y_records = read_records(tmp_path / "X" / RECORDS_FILE), read_records(tmp_path / "Y" / RECORDS_FILE)
    summary = json.loads((tmp_path / "Y" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in x_records + y_records), rel=1e-12)
    assert summary["earlier_records"] == [str(tmp_path / "X" / RECORDS_FILE)]
    assert {r.attempt for r in y_records} == {1}
    assert f"Not in these records: attempt(s) 0 of run {second.run_id}" in report.render(y_records, "md")
    assert "Not in these records" not in report.render(x_records + y_records, "md")
    # Resumed again in Y, from the second attempt's checkpoint: its history is X's and Y's (it read
    # Y's alone, and the run's total lost the first attempt: 1.17e-3 kWh of 2.29e-3).
    third, clock3, _ = setup(tmp_path / "Y")
    third.load_state_dict(second.state_dict())
    run_epochs(third, clock3, epochs=1)
    y_records = read_records(tmp_path / "Y" / RECORDS_FILE)
    summary = json.loads((tmp_path / "Y" / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in x_records + y_records), rel=1e-12)
    assert (summary["attempts"], summary["earlier_records"]) == (3, [str(tmp_path / "X" / RECORDS_FILE)])


def test_a_phase_whose_exception_the_loop_catches_ends_there_as_cut_short(tmp_path):
    """The README loop retrying an epoch after running out of memory: the failed try stayed open
    around the retry and every later epoch (one 'partial' record of 1.6 s for a 0.1 s try, no gaps).
    It ends where the exception left it, partial; the retry and the gaps are records of their own."""
    tracker, clock, _ = setup(tmp_path)
    for epoch in range(2):
        clock.advance(0.5)
        try:
            with tracker.phase("train", epoch):
                clock.advance(0.1)
                tracker.add_samples(8)
                if epoch == 0:
                    raise MemoryError("out of memory")
        except MemoryError:
            with tracker.phase("train", epoch):  # tried again with a smaller batch
                clock.advance(0.2)
                tracker.add_samples(16)
    clock.advance(0.5)
    tracker.finish()
    records = read_records(tmp_path / RECORDS_FILE)
    assert [(r.phase, r.epoch, r.samples, r.partial, round(r.duration_s, 6)) for r in records] == [
        ("other", None, 0, False, 0.5), ("train", 0, 8, True, 0.1),  # (no time between: no gap)
        ("train", 0, 16, False, 0.2), ("other", 0, 0, False, 0.5), ("train", 1, 8, False, 0.1),
        ("other", 1, 0, False, 0.5),
    ]


def test_a_run_resumed_across_three_directories_and_back_keeps_every_attempt(tmp_path):
    """A, then B, then back into A from B's checkpoint: A held some of the run, so B was left out
    of the history (the summary lost B's attempt, seq numbers repeated). Then C: the warning named
    only the last directory. And a directory of the run that is gone: its energy left the total
    silently; the checkpoint's totals are used, said."""
    import shutil

    trackers, states = [], [None]
    for name in ("A", "B", "A", "C"):
        tracker, clock, _ = setup(tmp_path / name)
        if states[-1] is not None:
            tracker.load_state_dict(states[-1])
        run_epochs(tracker, clock, epochs=1)
        trackers.append(tracker)
        states.append(tracker.state_dict())
    every = [r for d in "ABC" for r in read_records(tmp_path / d / RECORDS_FILE)]
    assert sorted((r.attempt, r.seq) for r in every) == sorted({(r.attempt, r.seq) for r in every})  # no seq twice
    for name in ("A", "C"):  # A after its second attempt there, C at the end
        done = {"A": trackers[2], "C": trackers[3]}[name]
        held = [r for r in every if r.attempt <= done.ledger.attempt]
        assert done.total_energy_j == pytest.approx(sum(r.energy_kwh for r in held) * 3.6e6, rel=1e-12)
    summary = json.loads((tmp_path / "C" / "energy-summary.json").read_text())
    assert sorted(summary["earlier_records"]) == [str(tmp_path / d / RECORDS_FILE) for d in "AB"]
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in every), rel=1e-12)
    shutil.rmtree(tmp_path / "A")
    again, clock, _ = setup(tmp_path / "C")
    with pytest.warns(UserWarning, match="are gone; its totals go on from the checkpoint's"):
        again.load_state_dict(states[-1])
    assert again.total_energy_j == pytest.approx(sum(r.energy_kwh for r in every) * 3.6e6, rel=1e-9)


def test_a_checkpoint_saved_by_a_signal_handler_inside_a_boundary_bills_nothing_twice(tmp_path):
    """Lightning's SLURM requeue handler (SIGUSR1) saves a checkpoint wherever the signal lands,
    also inside the tracker's own boundary: the handler's ``state_dict`` billed the interval since
    the last snapshot, then the interrupted boundary billed it again (an epoch counted twice: 12.4 s
    of records for a 5 s epoch)."""
    tracker, clock, _ = setup(tmp_path)
    start = clock()
    meter, real_between = tracker.meter, tracker.meter.between
    saved = []

    def between_interrupted(*args, **kwargs):  # the signal lands while the boundary bills
        if not saved:
            saved.append(None)
            saved[0] = tracker.state_dict()
        return real_between(*args, **kwargs)

    clock.advance(1.0)
    tracker.begin("train", 0)
    clock.advance(5.0)
    tracker.begin("validation", 0)
    clock.advance(2.0)
    meter.between = between_interrupted
    tracker.end("validation")
    meter.between = real_between
    clock.advance(1.0)
    tracker.end("train")
    clock.advance(1.0)
    tracker.finish()
    records = read_records(tmp_path)
    assert saved and saved[0]["run_id"] == tracker.run_id
    # ... and still saves the phases open then, as billed so far, for a resume after a kill.
    assert [(r["phase"], r["duration_s"]) for r in saved[0]["open_records"]] == [("train", 5.0)]
    assert sum(r.duration_s for r in records) == pytest.approx(clock() - start)
    assert sum(r.it_energy_kwh for r in records) * 3.6e6 == pytest.approx(100.0 * (clock() - start))


@pytest.mark.parametrize("restored_before_start", [False, True])
@pytest.mark.parametrize("gap_s", [0.1, 1.0])  # the gap before the epoch: unwritten / written at its begin
def test_a_resume_of_an_attempt_killed_inside_a_phase_writes_what_the_checkpoint_counted_of_it(tmp_path, restored_before_start, gap_s):
    """Preempted inside an epoch (a checkpoint every N steps, SIGKILL: no handler runs). Where no
    record of the run existed, the resume went on from the checkpoint's totals, and the summary
    and logged totals held energy that no record did (report: 1.59e-6 of 2.15e-6 kWh); where one
    did (a sanity validation, a gap written), the epoch's energy up to the checkpoint was lost."""
    first, clock, _ = setup(tmp_path)
    clock.advance(gap_s)
    first.begin("train", 0)
    clock.advance(10.0)
    first.add_samples(640)
    checkpoint = first.state_dict()  # saved at a step inside epoch 0
    clock.advance(3.0)
    first._stop()  # killed: nothing more written
    if restored_before_start:
        clock2 = FakeClock()
        meter = Meter([ScriptedSensor("gpu0", clock2, power_w=100.0)], fallback=None, clock=clock2,
                      wall_clock=lambda: clock2() + 1.7e9 + 100)
        second = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path)
        second.load_state_dict(checkpoint)
        second.start(meter)
    else:
        second, clock2, _ = setup(tmp_path)
        second.load_state_dict(checkpoint)
    second.begin("train", 0)
    clock2.advance(5.0)
    second.add_samples(360)
    second.end("train")
    second.finish()
    records = read_records(tmp_path)
    assert {r.run_id for r in records} == {first.run_id}
    before = [r for r in records if r.attempt == 0]
    assert [(r.phase, r.epoch, r.partial, r.samples) for r in before] == [("other", None, False, 0), ("train", 0, True, 640)]
    assert sum(r.duration_s for r in before) == pytest.approx(gap_s + 10.0)
    assert sum(r.it_energy_kwh for r in before) * 3.6e6 == pytest.approx(100.0 * (gap_s + 10.0))
    assert before[1].energy_j_per_sample == pytest.approx(1000.0 * PUE / 640)
    assert len({r.seq for r in records}) == len(records)
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)
    assert summary["phases"]["train"]["samples"] == sum(r.samples for r in records if r.phase == "train") == 1000
    # A later resume reads these records, as any other: the same totals, nothing carried again.
    third, _, _ = setup(tmp_path)
    third.load_state_dict(second.state_dict())
    assert third.total_energy_j == pytest.approx(second.total_energy_j)
    third.finish()
    assert [r for r in read_records(tmp_path) if r.attempt < 2] == records


@pytest.mark.parametrize("arguments, refused", [
    ((None,), "meter must be a greencallbacks.Meter"),
    ((5,), "meter must be a greencallbacks.Meter"),
    (("meter", {"reducer": 5}), "reducer"),
    (("meter", {"output_dir": 5}), "output_dir must be a directory path"),
    (("meter", {"output_dir": "file"}), "is a file"),
])
def test_start_refuses_a_wrong_meter_reducer_or_output_dir_naming_it(tmp_path, arguments, refused):
    """Tracker() refused an output_dir that is a file, but start(meter, output_dir=<file>) took it,
    trained, and lost every record at the end; a wrong meter or reducer failed deep inside."""
    (tmp_path / "file").write_text("")
    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock)], fallback=None, clock=clock)
    given, *rest = arguments
    kwargs = dict(rest[0]) if rest else {}
    if kwargs.get("output_dir") == "file":
        kwargs["output_dir"] = tmp_path / "file"
    tracker = Tracker()
    with pytest.raises((TypeError, ValueError), match=refused):
        tracker.start(meter if given == "meter" else given, **kwargs)
    assert not tracker.running


def test_the_phases_carried_after_a_killed_attempts_torn_line_leave_the_file_readable(tmp_path):
    """Killed while writing a record (its last line torn), then resumed: the resume writes the
    attempt's open phases after the torn line, and the reader took that for a torn line inside
    one attempt (damage) and refused the file."""
    first, clock, _ = setup(tmp_path)
    first.begin("train", 0)
    clock.advance(10.0)
    first.end("train")
    first.begin("train", 1)
    clock.advance(5.0)
    checkpoint = first.state_dict()
    clock.advance(1.0)
    first._stop()
    with open(tmp_path / RECORDS_FILE, "a") as file:  # the kill came mid-write
        file.write(json.dumps(read_records(tmp_path)[-1].to_dict())[:80])
    second, clock2, _ = setup(tmp_path)
    second.load_state_dict(checkpoint)
    second.begin("train", 1)
    clock2.advance(5.0)
    second.end("train")
    second.finish()
    with pytest.warns(UserWarning, match="skipped a torn line"):
        records = read_records(tmp_path)
    carried = [(r.attempt, r.phase, r.epoch, r.partial, r.carried) for r in records if r.carried]
    assert carried == [(0, "train", 1, True, True)]
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-12)


def test_a_phase_name_mistyped_at_its_end_or_in_metrics_is_refused_as_at_its_begin(tmp_path):
    """``end("training")`` returned None and left the phase open, so the next ``begin("train")``
    nested inside it ("3 epochs; cut short ..., none completed"); ``metrics("val")`` gave {}."""
    tracker, clock, _ = setup(tmp_path)
    tracker.begin("train", 0)
    clock.advance(1.0)
    with pytest.raises(ValueError, match=r"phase must be one of .*got 'training'"):
        tracker.end("training")
    record = tracker.end("train")  # still open, and ends whole
    assert record is not None and not record.partial
    with pytest.raises(ValueError, match=r"got 'val'"):
        tracker.metrics("val")
    assert tracker.metrics("validation") == {}  # a real phase not finished yet
    tracker.finish()


@pytest.mark.parametrize("framework", [None, 3, ["torch"]])
def test_a_framework_that_is_no_string_is_refused_at_construction(framework):
    """Accepted, it went into every record, and every reader then refused the run's records."""
    with pytest.raises(TypeError, match=r"framework must be a string"):
        Tracker(framework=framework)


def _meter(clock, sensor):
    return Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9)


def test_a_tracker_started_again_measures_a_later_call_of_its_run_and_refuses_a_new_training(tmp_path):
    """Started again after finish, a Tracker went on with the same run and totals whatever came:
    a second training from epoch 0 was written into the first run, its epoch 0 twice in one
    attempt, where every adapter makes a new training a new run. A later call that trains nothing
    (a test after the training, as the callbacks measure it) still continues the run; a training
    is refused, naming what to do, and the finished run is left as it was (no partial record)."""
    clock = FakeClock()
    sensor = ScriptedSensor("gpu0", clock, power_w=100.0)
    tracker = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path)
    with tracker.start(_meter(clock, sensor)):
        with tracker.phase("train", 0):
            clock.advance(10.0)
            tracker.add_samples(100)
    with tracker.start(_meter(clock, sensor)):  # a later call of the run: continued
        with tracker.phase("test"):
            clock.advance(2.0)
    with pytest.raises(RuntimeError, match=r"has finished.*make a new Tracker.*load_state_dict\(tracker.state_dict\(\)\)"):
        with tracker.start(_meter(clock, sensor)):
            with tracker.phase("train", 0):  # the loop run again: a new training
                clock.advance(10.0)
    assert not tracker.running
    records = read_records(tmp_path)
    assert {r.run_id for r in records} == {tracker.run_id} and {r.attempt for r in records} == {0}
    assert [(r.phase, r.epoch) for r in records if r.phase != "other"] == [("train", 0), ("test", None)]
    assert not any(r.partial for r in records)
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records))
    assert summary["energy_kwh"] * 3.6e6 == pytest.approx(100.0 * 12.0 * PUE)  # not the refused training's 10 s

    # What the message says to do: a new Tracker given the state continues the run as its next attempt.
    resumed = Tracker(carbon=Carbon(intensity=INTENSITY, pue=PUE), output_dir=tmp_path)
    resumed.load_state_dict(tracker.state_dict())
    with resumed.start(_meter(clock, sensor)):
        with resumed.phase("train", 1):
            clock.advance(10.0)
    again = [r for r in read_records(tmp_path) if r.phase == "train"]
    assert [(r.run_id, r.attempt, r.epoch) for r in again] == [(tracker.run_id, 0, 0), (tracker.run_id, 1, 1)]


def test_phases_of_one_tracker_begun_from_two_threads_are_said_once(tmp_path):
    """Two threads each running phases on one tracker (a training loop, and an evaluation in a
    thread of its own): the evaluation nested inside the open training, and every sample either
    counted went to the other's phase, without a word."""
    tracker, clock, _ = setup(tmp_path)

    def evaluate():
        tracker.begin("validation", 0)
        tracker.add_samples(20)
        tracker.end("validation")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.begin("train", 0)
        tracker.add_samples(50)
        for _ in range(2):  # said once per tracker
            evaluator = threading.Thread(target=evaluate, name="evaluator")
            evaluator.start()
            evaluator.join()
        clock.advance(1.0)
        tracker.end("train")
        tracker.finish()
    said = [str(w.message) for w in caught if "thread" in str(w.message)]
    assert len(said) == 1, said
    assert "Tracker.begin('validation') came from thread 'evaluator'" in said[0]
    assert "phase 'train'" in said[0] and "begun by thread 'MainThread'" in said[0]


def test_samples_counted_from_another_thread_into_a_phase_are_said_at_its_end(tmp_path):
    """A loader thread counting batches as it makes them: each count lands in whatever phase is
    open then (prefetched validation batches in the training epoch). One int comparison per
    add_samples; said once, when the phase ends. Counted from the phase's own thread, or from
    another into a run that then aborts (the Keras watch labels a failed call's open phase from
    its own thread), nothing is said."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet, clock, _ = setup(tmp_path / "quiet")
        quiet.begin("train", 0)
        quiet.add_samples(10)
        quiet.end("train")
        quiet.begin("predict")
        labeller = threading.Thread(target=quiet.add_samples, args=(3,), name="watch")
        labeller.start()
        labeller.join()
        quiet.abort()
        assert not [w for w in caught if "thread" in str(w.message)]

        tracker, clock, _ = setup(tmp_path / "loud")
        tracker.begin("train", 0)
        loader = threading.Thread(target=tracker.add_samples, args=(32,), name="loader")
        loader.start()
        loader.join()
        assert not [w for w in caught if "thread" in str(w.message)]  # not on the loader's thread
        clock.advance(1.0)
        tracker.end("train")
        tracker.finish()
    said = [str(w.message) for w in caught if "thread" in str(w.message)]
    assert len(said) == 1 and "Tracker.add_samples came from thread 'loader'" in said[0], said


def test_a_mistyped_keyword_names_the_nearest_valid_one():
    """The callbacks said "did you mean ...?" for a mistyped keyword; the Tracker gave Python's
    `Tracker.__init__() got an unexpected keyword argument`, naming nothing valid."""
    with pytest.raises(TypeError, match=r"^Tracker\(\) got an unexpected keyword argument 'ouput_dir'; did you mean "
                                        r"'output_dir'\? \(valid: carbon, embodied, framework, output_dir, run_id\)$"):
        Tracker(ouput_dir="energy")
    with pytest.raises(TypeError, match="framework must be a string"):  # its own TypeErrors, as they were
        Tracker(framework=None)
    with pytest.raises(TypeError, match="positional"):  # and Python's for what is no keyword
        Tracker(None)


def test_starting_again_at_once_after_a_failed_call_waits_for_its_write_up(tmp_path):
    """A loop that raised is written up by the watch thread within ``watch.POLL_S``; a script that
    catches the exception and starts the tracker again at once found it still running (start did
    nothing), then the write-up stopped it under the new loop, which was measured by nothing."""
    import sys

    from greencallbacks import watch

    clock = FakeClock()

    def meter():
        return Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock)

    tracker = Tracker(output_dir=tmp_path, carbon=Carbon(intensity=200.0)).start(meter())
    tracker.begin("train", 0)
    clock.advance(5.0)

    def failing_loop():
        watch.watch(sys._getframe(), tracker.abort)  # as the Keras and HF callbacks watch their calls
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        failing_loop()
    tracker.start(meter())  # at once: its write-up is done first
    assert tracker.running
    tracker.begin("validation", 0)
    clock.advance(1.0)
    tracker.end("validation")
    tracker.finish()
    records = read_records(tmp_path / RECORDS_FILE)
    assert [(r.phase, r.partial) for r in records if r.phase != "other"] == [("train", True), ("validation", False)]


def test_the_summary_says_whether_the_call_that_wrote_it_failed(tmp_path):
    # The totals of a run cut short by an exception read like a finished one's: only its partial
    # records told, and no one reads those to learn it.
    import json

    from tests.fakes.scripted import FakeClock, ScriptedSensor

    clock = FakeClock()

    def started() -> Tracker:
        meter = Meter([ScriptedSensor("gpu0", clock, power_w=100.0)], fallback=None, clock=clock,
                      wall_clock=lambda: clock() + 1.7e9)
        return Tracker(carbon=Carbon(intensity=100.0), output_dir=tmp_path, run_id="r").start(meter)

    with pytest.raises(RuntimeError), started() as tracker:
        with tracker.phase("train", 0):
            clock.advance(5.0)
            raise RuntimeError("a bug in the step")
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["ended"] == "failed" and summary["energy_kwh"] > 0
    with started() as second:  # the next run in the directory (r-2), ending well; r's is kept
        with second.phase("train", 0):
            clock.advance(1.0)
    assert json.loads((tmp_path / "energy-summary.json").read_text())["ended"] == "finished"
    assert json.loads((tmp_path / "energy-summary-r.json").read_text())["ended"] == "failed"
