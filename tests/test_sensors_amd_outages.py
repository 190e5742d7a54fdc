"""AMD GPUs through amdsmi outages: the GPU is counted throughout.

Calls failing for a while with a status the library asks to retry (RETRY, TIMEOUT: its
``AmdSmiRetryException`` and ``AmdSmiTimeoutException``) or that finds the device busy, then
answering again, are held as an NVML timeout is
(``test_sensors_nvml.py::test_an_nvml_outage_does_not_stop_counting_the_gpu``). Every amdsmi
failure was taken as final: a 0.3 s outage stopped counting the GPU for the rest of the run
(300 J of 900 J at 300 W over 3 s), its later records labelled "stopped counting".

An energy accumulator that stands still while the board draws power (amdsmi has done so for a
whole process) is such an outage, and the board is read on by its power.
"""

from __future__ import annotations

import warnings

import pytest

from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks.sensors.amd import COUNTER_UPDATE_PERIOD_S, find_amd_gpus
from tests.fakes import fake_amdsmi as fa
from tests.fakes.fake_amdsmi import FakeAmdSmi
from tests.fakes.scripted import FakeClock, polling

POWER_W = 300.0


def metered_board(power_w=POWER_W):
    clock = FakeClock(start=500.0)
    smi = FakeAmdSmi(clock)
    board = smi.add_board(power_w=power_w)
    meter = Meter(find_amd_gpus(environ={}, amdsmi=smi, clock=clock).sensors, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    run = polling(meter, clock)

    return board, meter, run


@pytest.mark.parametrize("outage_s", [0.3, 3.0])
@pytest.mark.parametrize("status", ["AMDSMI_STATUS_BUSY", "AMDSMI_STATUS_RETRY", "AMDSMI_STATUS_TIMEOUT"])
def test_an_amdsmi_outage_the_library_asks_to_retry_does_not_stop_counting_the_gpu(status, outage_s):
    board, meter, run = metered_board()
    first = meter.snapshot(exact=True)
    run(1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        board.error_code = getattr(fa, status)
        for _ in range(round(outage_s / 0.1)):
            run(0.1)
            meter.snapshot()
        board.error_code = None
        run(1.0)
        last = meter.snapshot(exact=True)
    meter.close()
    said = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
    # A short outage goes unsaid; one past meter.TRANSIENT_HOLD_S is said once.
    assert len(said) == (1 if outage_s > 1.0 else 0), said
    assert all("has not answered" in message for message in said)
    [component] = meter.between(first, last).components
    assert component.energy_j == pytest.approx(POWER_W * (2.0 + outage_s), abs=POWER_W * COUNTER_UPDATE_PERIOD_S)
    assert component.method == "counter" and not meter.channels[0].failed


def test_an_amdsmi_failure_that_is_no_retry_still_stops_counting_at_once():
    """A device gone (NOT_FOUND) is no outage: it stops counting, said once, as before."""
    clock = FakeClock(start=500.0)
    smi = FakeAmdSmi(clock)
    board = smi.add_board(power_w=POWER_W)
    meter = Meter(find_amd_gpus(environ={}, amdsmi=smi, clock=clock).sensors, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    meter.snapshot()
    clock.advance(1.0)
    board.error_code = fa.AMDSMI_STATUS_NOT_FOUND
    with pytest.warns(EnergyWarning, match="no longer counted"):
        meter.snapshot()
    meter.close()
    assert meter.channels[0].failed and "stopped counting" in meter.channels[0].note


@pytest.mark.parametrize("frozen_at_s", [0.0, 3.0])
def test_an_accumulator_standing_still_while_the_board_draws_power_is_read_on_by_its_power(frozen_at_s):
    """amdsmi has given one accumulator value for a whole process (ROCm 6.0-6.1 on MI100 and MI210:
    ROCm/amdsmi#22, #38, ROCm/rocm_smi_lib#180) while the board's power reads went on. Taken as a
    count, the GPU was billed 0 J for the whole run (0 of 3,000 J), labelled "counter". Past
    amd.FROZEN_AFTER_S it is held as an outage, then read on by its power, the span since it last
    moved bridged at the power read then and stated: the total is right and says how."""
    board, meter, run = metered_board()
    if not frozen_at_s:
        board.freeze()
    snapshots = [meter.snapshot()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for second in range(10):
            if frozen_at_s and second == frozen_at_s:
                board.freeze()
            run(1.0)
            snapshots.append(meter.snapshot())
    meter.close()
    said = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
    assert len(said) == 1 and "accumulator has not moved" in said[0] and "sampled from now on" in said[0], said
    [component] = meter.between(snapshots[0], snapshots[-1]).components
    assert component.energy_j == pytest.approx(POWER_W * 10.0, rel=0.01)
    assert component.method == "sampled" and "has not moved for" in component.note
    bridged_j = meter.channels[0].bridged_j
    assert bridged_j == pytest.approx(POWER_W * 4.0, rel=0.05)  # FROZEN_AFTER_S, then held through the outage
    assert component.uncertainty_j >= 0.5 * bridged_j  # stated as estimated
    windows = [meter.between(a, b).energy_j for a, b in zip(snapshots, snapshots[1:])]
    assert sum(windows) == pytest.approx(component.energy_j)


@pytest.mark.parametrize("crawls_at_s", [0.0, 3.0])
def test_an_accumulator_gathering_a_share_of_the_boards_power_is_read_on_by_its_power(crawls_at_s):
    """amdsmi's accumulator on an MI100 gathered 1 J in 10 s while the board drew tens of watts
    (ROCm/amdsmi#38). Taken as a count, the GPU was billed 1 % of its energy (30 of 3,000 J over 10 s,
    crawling from the start), labelled "counter". Past amd.CRAWL_WINDOW_S it is held as an outage,
    then read on by its power, the window bridged at that power less what the accumulator gathered:
    no joule counted twice."""
    board, meter, run = metered_board()
    if not crawls_at_s:
        board.crawl(0.01)
    snapshots = [meter.snapshot()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for second in range(20):
            if crawls_at_s and second == crawls_at_s:
                board.crawl(0.01)
            run(1.0)
            snapshots.append(meter.snapshot())
    meter.close()
    said = [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
    assert len(said) == 1 and "ROCm/amdsmi#38" in said[0] and "sampled from now on" in said[0], said
    [component] = meter.between(snapshots[0], snapshots[-1]).components
    assert component.energy_j == pytest.approx(POWER_W * 20.0, rel=0.01)
    assert component.method == "sampled" and "ROCm/amdsmi#38" in component.note
    assert component.uncertainty_j >= 0.5 * meter.channels[0].bridged_j > 0  # stated as estimated
    windows = [meter.between(a, b).energy_j for a, b in zip(snapshots, snapshots[1:])]
    assert sum(windows) == pytest.approx(component.energy_j)


@pytest.mark.parametrize("idle_w", [20.0, 0.5])
def test_an_accumulator_keeping_pace_through_a_load_starting_is_no_fault(idle_w):
    """A board idling, then training at 300 W: the accumulator's pace over a window in which the load
    started lags the power read at its end, and is no fault (nor is a board at 0.5 W)."""
    board, meter, run = metered_board(power_w=idle_w)
    first = meter.snapshot()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(30):
            if step == 14:
                run(0.49)  # the load starts just before a read
                board.set_power(POWER_W)
                run(0.01)
            else:
                run(0.5)
        last = meter.snapshot()
    meter.close()
    assert not [str(w.message) for w in caught if issubclass(w.category, EnergyWarning)]
    [component] = meter.between(first, last).components
    assert component.method == "counter"
    assert component.energy_j == pytest.approx(idle_w * 7.49 + POWER_W * 7.51, rel=0.01)


def test_an_accumulator_standing_still_on_a_board_at_0_w_is_no_fault():
    board, meter, run = metered_board(power_w=0.0)
    first = meter.snapshot()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(6.0)
        last = meter.snapshot()
    meter.close()
    assert not [w for w in caught if issubclass(w.category, EnergyWarning)]
    [component] = meter.between(first, last).components
    assert (component.method, component.energy_j) == ("counter", 0.0)
