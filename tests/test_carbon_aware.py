import math

import pytest

from greencallbacks.carbon import Carbon, Intensity
from greencallbacks.carbon_aware import CarbonAwarePause
from greencallbacks.meter import Meter
from tests.fakes.system_clock import SystemClock

T0 = 1_700_000_000.0


class Clock:
    """A fake wall clock that ``sleep`` advances."""

    def __init__(self, now=T0):
        self.now = now
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class StepSeries:
    """Intensity by wall-clock time: ``steps`` = [(from_unix, g_per_kwh), ...]."""

    def __init__(self, steps):
        self.steps = steps
        self.asked = []

    def mean_between(self, start, end):
        self.asked.append((start, end))
        value = [v for t, v in self.steps if t <= start][-1]
        return Intensity(value, f"test steps at {value}", "test", 2024, "test")


def pause(threshold, max_delay, clock, check_every=300.0):
    return CarbonAwarePause(threshold, max_delay, check_every_s=check_every, sleep=clock.sleep, clock=clock)


def test_no_pause_when_the_grid_is_clean():
    clock = Clock()
    gate = pause(300, 3600, clock)
    assert gate.maybe_pause(Carbon(intensity=200)) == 0.0
    assert clock.sleeps == [] and gate.pauses == [] and gate.total_paused_s == 0.0


def test_pauses_until_the_intensity_drops():
    clock = Clock()
    series = StepSeries([(0, 500), (T0 + 1000, 250)])
    gate = pause(300, 7200, clock)
    paused = gate.maybe_pause(Carbon(series=series))
    # Checks at 0, 300, 600, 900 s see 500; at 1200 s it is 250.
    assert paused == 1200.0
    assert clock.sleeps == [300.0] * 4
    assert gate.total_paused_s == 1200.0
    (record,) = gate.pauses
    assert (record.start_unix, record.end_unix, record.intensity_g_per_kwh) == (T0, T0 + 1200, 500)
    assert record.duration_s == 1200.0 and "500" in record.intensity_source
    assert all(start == end for start, end in series.asked)  # the intensity "now", an instant


def test_budget_limits_the_total_delay_across_calls():
    clock = Clock()
    dirty = Carbon(intensity=900)
    gate = pause(300, 1000, clock)
    assert gate.maybe_pause(dirty) == 1000.0
    assert clock.sleeps == [300.0, 300.0, 300.0, 100.0]  # the last step is cut to the budget
    assert gate.maybe_pause(dirty) == 0.0  # budget spent: training goes on
    assert gate.total_paused_s == 1000.0 and gate.remaining_delay_s == 0.0
    assert len(gate.pauses) == 1


def test_each_run_has_its_own_delay_budget_and_a_resume_keeps_the_spent_one():
    """Two fits with one callback are two runs: the second got no delay budget (the first had
    spent it) and logged the first run's pause time."""
    from greencallbacks.session import EnergySession

    clock = Clock()
    gate = pause(300, 600, clock)
    dirty = Carbon(intensity=900)
    first = EnergySession(intensity=900, carbon_aware=gate)
    assert first.carbon_aware.maybe_pause(dirty) == 600.0
    second = EnergySession(intensity=900, carbon_aware=gate)
    assert second.carbon_aware.total_paused_s == 0.0 and second.carbon_aware.remaining_delay_s == 600.0
    resumed = EnergySession(intensity=900, carbon_aware=gate)
    resumed.carbon_aware.load_state_dict(first.carbon_aware.state_dict())
    assert resumed.carbon_aware.remaining_delay_s == 0.0


def test_zero_budget_never_sleeps():
    clock = Clock()
    assert pause(100, 0, clock).maybe_pause(Carbon(intensity=900)) == 0.0
    assert clock.sleeps == []


def test_threshold_is_exclusive():
    clock = Clock()
    assert pause(300, 1000, clock).maybe_pause(Carbon(intensity=300)) == 0.0


def test_measures_the_real_wait_not_the_requested_one():
    clock = Clock()
    oversleep = lambda seconds: setattr(clock, "now", clock.now + seconds + 5)  # noqa: E731
    gate = CarbonAwarePause(300, 600, check_every_s=300, sleep=oversleep, clock=clock)
    # 300 asked, 305 taken; then the 295 s left of the budget asked, 300 taken.
    assert gate.maybe_pause(Carbon(intensity=900)) == 605.0


def test_a_stuck_clock_does_not_loop_forever():
    gate = CarbonAwarePause(300, 600, check_every_s=300, sleep=lambda s: None, clock=lambda: T0)
    assert gate.maybe_pause(Carbon(intensity=900)) == 0.0


def test_state_dict_keeps_the_spent_budget():
    clock = Clock()
    gate = pause(300, 1000, clock)
    gate.maybe_pause(Carbon(intensity=900))
    resumed = pause(300, 1000, Clock())
    resumed.load_state_dict(gate.state_dict())
    assert resumed.remaining_delay_s == 0.0


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"threshold_g_per_kwh": 0, "max_delay_s": 10}, "threshold_g_per_kwh"),
        ({"threshold_g_per_kwh": -5, "max_delay_s": 10}, "threshold_g_per_kwh"),
        ({"threshold_g_per_kwh": math.inf, "max_delay_s": 10}, "threshold_g_per_kwh"),
        ({"threshold_g_per_kwh": math.nan, "max_delay_s": 10}, "threshold_g_per_kwh"),
        ({"threshold_g_per_kwh": "300", "max_delay_s": 10}, "threshold_g_per_kwh"),
        ({"threshold_g_per_kwh": 300, "max_delay_s": -1}, "max_delay_s"),
        ({"threshold_g_per_kwh": 300, "max_delay_s": math.nan}, "max_delay_s"),
        ({"threshold_g_per_kwh": 300, "max_delay_s": 10, "check_every_s": 0}, "check_every_s"),
    ],
)
def test_arguments_are_validated(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        CarbonAwarePause(**kwargs)


def test_an_exception_raised_into_the_sleep_ends_the_pause_counted_so_far():
    clock = Clock()

    def sleep_then_interrupt(seconds):
        clock.now += 100.0  # a signal arrives 100 s into the sleep
        raise KeyboardInterrupt

    gate = CarbonAwarePause(300, 3600, check_every_s=300.0, sleep=sleep_then_interrupt, clock=clock)
    with pytest.raises(KeyboardInterrupt):
        gate.maybe_pause(Carbon(intensity=900))
    assert gate.total_paused_s == 100.0  # not given back to the delay budget
    (record,) = gate.pauses
    assert record.duration_s == 100.0


class TimeLimit(Exception):
    """What a job's SIGALRM / SIGTERM handler raises: it lands where the training thread waits."""


def _raising_pause():
    def sleep(seconds):
        raise TimeLimit("job time limit reached")

    return CarbonAwarePause(300, 3600, check_every_s=1.0, sleep=sleep)


def test_an_exception_raised_into_a_pause_stops_a_lightning_fit_and_is_no_hook_failure(tmp_path):
    """It was swallowed by the hook's guard ("on_train_epoch_start failed ... training continues"):
    the fit went on, and the epoch after the pause had no record, its samples billed to the gap."""
    pytest.importorskip("lightning")
    import warnings

    from greencallbacks.records import read_records
    from greencallbacks.report import configuration, cut_short
    from tests.lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    callback = EnergyCallback(intensity=900.0, carbon_aware=_raising_pause(), output_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TimeLimit):
            L.Trainer(max_epochs=3, logger=False, callbacks=[callback], **trainer_kwargs()).fit(TinyModel(), *loaders())
    assert not [w for w in caught if "training continues" in str(w.message)]
    records = read_records(tmp_path)
    assert [(r.phase, r.epoch) for r in records if r.phase == "train"] == [("train", 0)]
    assert all(r.samples == 0 for r in records if r.phase == "other")
    assert records[-1].phase == "other" and records[-1].partial and cut_short(configuration(records))


def test_numpy_numbers_are_numbers():
    # Refused before with "must be a finite number > 0, got np.int64(300)".
    np = pytest.importorskip("numpy")
    from greencallbacks.budget import Budget

    gate = CarbonAwarePause(np.int64(300), np.float32(3600.0))
    assert (gate.threshold_g_per_kwh, gate.max_delay_s) == (300.0, 3600.0)
    assert Budget(kwh=np.int64(5), warn_at=np.float64(0.5)).limits["kwh"] == 5.0
    with pytest.raises(ValueError, match="threshold_g_per_kwh"):
        CarbonAwarePause(np.float64("nan"), 10)


def test_a_resume_does_not_pause_again_what_a_crashed_attempt_paused_after_its_checkpoint(tmp_path):
    """The checkpoint (Lightning, HF) is written at an epoch's end, before the pause that follows;
    a crash 1800 s into that pause left the checkpoint's figure at 0, and the resume paused a
    fresh 3000 s of a 3000 s allowance. The gap's record now carries the pause, as the energy."""
    from greencallbacks.records import read_records
    from greencallbacks.session import EnergySession

    clock = Clock()

    def interrupted_sleep(seconds):
        clock.now += 1800.0
        raise KeyboardInterrupt

    first = EnergySession(intensity=900, output_dir=tmp_path,
                          carbon_aware=CarbonAwarePause(300, 3000, check_every_s=3000, sleep=interrupted_sleep, clock=clock))
    first.start()
    first.tracker.begin("train", 0)
    first.tracker.end("train", samples=8)
    checkpoint = first.state_dict()  # at the epoch's end, before the pause
    with pytest.raises(KeyboardInterrupt):
        first.pause_between_epochs()
    first.stop(failed=True)
    (gap,) = [r for r in read_records(tmp_path) if r.paused_s]
    assert gap.phase == "other" and gap.partial and gap.paused_s == 1800.0

    resumed = EnergySession(intensity=900, output_dir=tmp_path, carbon_aware=pause(300, 3000, Clock()))
    resumed.load_state_dict(checkpoint)
    resumed.start()
    assert resumed.carbon_aware.remaining_delay_s == 1200.0
    resumed.stop()


@pytest.mark.parametrize("dirty_on, paused", [((0,), 900.0), ((1,), 0.0), ((0, 1), 900.0)])
def test_ranks_pause_as_rank_0_decides(dirty_on, paused):
    """Each rank looked the intensity up and decided for itself; one whose view differed (a live
    source fallen back to its table) paused while the other waited for it in a collective."""
    import threading

    barrier, slots = threading.Barrier(2, timeout=30), [None, None]

    def agree_as(rank):
        def agree(mine):
            slots[rank] = mine
            barrier.wait()
            decided = slots[0]
            barrier.wait()
            return decided
        return agree

    results = [None, None]

    def rank_body(rank):
        clock = Clock()
        gate = pause(300, 900, clock)
        results[rank] = gate.maybe_pause(Carbon(intensity=900 if rank in dirty_on else 100), agree=agree_as(rank))

    threads = [threading.Thread(target=rank_body, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [paused, paused]


def test_a_pause_is_decided_and_stamped_on_the_records_clock(monkeypatch):
    """A pause read time.time itself, the records the meter's stamps: after a step of the system
    clock a day forward, the run paused 2 s for the intensity a day ahead (900 g/kWh) while the
    gap that held the pause was recorded, and priced, at 100."""
    system = SystemClock(monkeypatch, unix_s=T0)
    meter = Meter([], fallback=None)  # default clocks, as the session builds it
    system.step(86400.0)
    series = StepSeries([(0, 100), (T0 + 43200, 900)])
    gate = CarbonAwarePause(500, 2.0, check_every_s=1.0, sleep=system.advance)
    assert gate.maybe_pause(Carbon(series=series)) == 0.0
    assert series.asked == [(meter.snapshot().unix_s,) * 2] == [(T0, T0)]
    # Dirtier than its threshold: the pause is stamped where the gap's record is.
    gate = CarbonAwarePause(50, 2.0, check_every_s=1.0, sleep=system.advance)
    assert gate.maybe_pause(Carbon(series=series)) == 2.0
    (record,) = gate.pauses
    assert (record.start_unix, record.end_unix, record.intensity_g_per_kwh) == (T0, T0 + 2.0, 100)
    assert meter.snapshot().unix_s == T0 + 2.0
    meter.close()
