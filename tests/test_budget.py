"""Budget: validation that names the argument, thresholds given once, the prediction rule, resume."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest

from greencallbacks.budget import Budget, BudgetDecision

NAN = math.nan
NO_PREDICTION = {
    "energy_kwh_predicted": NAN,
    "energy_kwh_predicted_low": NAN,
    "energy_kwh_predicted_high": NAN,
    "co2eq_g_predicted": NAN,
}


def prediction(central: float, low: float, high: float, g_per_kwh: float = 100.0) -> dict[str, float]:
    return {
        "energy_kwh_predicted": central,
        "energy_kwh_predicted_low": low,
        "energy_kwh_predicted_high": high,
        "co2eq_g_predicted": central * g_per_kwh,
    }


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"kwh": -1.0}, "kwh"),
        ({"kwh": 0}, "kwh"),
        ({"kwh": NAN}, "kwh"),
        ({"kwh": math.inf}, "kwh"),
        ({"kwh": True}, "kwh"),
        ({"kwh": "1"}, "kwh"),
        ({"co2eq_g": -5}, "co2eq_g"),
        ({"co2eq_g": NAN}, "co2eq_g"),
        ({"co2eq_g": False}, "co2eq_g"),
        ({}, "kwh= or co2eq_g="),
        ({"kwh": None, "co2eq_g": None}, "kwh= or co2eq_g="),
        ({"kwh": 1.0, "on_exceed": "halt"}, "on_exceed must be one of 'warn', 'stop'"),
        ({"kwh": 1.0, "on_exceed": None}, "on_exceed"),
        ({"kwh": 1.0, "warn_at": 1.0}, "warn_at"),
        ({"kwh": 1.0, "warn_at": 0}, "warn_at"),
        ({"kwh": 1.0, "warn_at": NAN}, "warn_at"),
        ({"kwh": 1.0, "warn_at": True}, "warn_at"),
    ],
)
def test_bad_configuration_fails_at_construction_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Budget(**kwargs)


def test_public_lazy_export_imports_nothing_heavy():
    code = (
        "import sys; from greencallbacks import Budget; Budget(kwh=1.0); "
        "heavy = [m for m in ('torch', 'keras', 'transformers', 'pynvml', 'lightning', 'tensorflow') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_warns_once_at_80_and_once_at_100_percent_of_the_total():
    budget = Budget(kwh=1.0)
    assert budget.check(0.5, 50.0, NO_PREDICTION).messages == ()
    first = budget.check(0.81, 81.0, NO_PREDICTION)
    assert first.crossed == ("kwh:warn_at",)
    assert first.messages == ("energy total 0.81 kWh is 81 % of the budget of 1 kWh",)
    assert budget.check(0.9, 90.0, NO_PREDICTION).messages == ()  # given once
    reached = budget.check(1.02, 102.0, NO_PREDICTION)
    assert reached.crossed == ("kwh:limit",)
    assert reached.messages == ("energy total 1.02 kWh reached the budget of 1 kWh",)
    assert reached.stop is False and reached.reason == reached.messages[0]  # on_exceed="warn"
    assert budget.check(1.5, 150.0, NO_PREDICTION).messages == ()
    assert budget.used_fraction == pytest.approx(1.5)


def test_the_early_warning_never_says_100_percent_below_the_limit():
    """0.999 kWh of 1 was 'is 100 % of the budget' (rounded), while under it: read as reached."""
    nearly = Budget(kwh=1.0, warn_at=0.9).check(0.999, None)
    assert nearly.crossed == ("kwh:warn_at",) and not nearly.stop
    assert nearly.messages == ("energy total 0.999 kWh is 99 % of the budget of 1 kWh",)
    assert Budget(co2eq_g=10.0).check(None, 8.46).messages == ("co2eq_g total 8.46 g is 85 % of the budget of 10 g",)
    assert Budget(kwh=1.0).check(0.9951, None).messages[0].endswith(" is 99 % of the budget of 1 kWh")


def test_a_total_no_float_can_hold_is_ignored_like_nan_not_an_error():
    """A budget must not break training: an integer past a float's range raised OverflowError."""
    assert Budget(kwh=1.0).check(10**400, None, {"energy_kwh_predicted": 10**400}).messages == ()


def test_stop_on_the_co2eq_total_with_the_reason_and_metrics():
    budget = Budget(co2eq_g=800, on_exceed="stop")
    assert budget.check(1.0, 700.0).metrics() == {"budget_used_fraction": pytest.approx(0.875), "budget_stop": 0.0}
    decision = budget.check(1.2, 812.3)
    assert decision.stop and decision.newly_stopped
    assert decision.reason == "co2eq_g total 812.3 g reached the budget of 800 g"
    assert decision.messages == ("co2eq_g total 812.3 g reached the budget of 800 g; stopping training",)
    assert decision.metrics() == {"budget_used_fraction": pytest.approx(812.3 / 800), "budget_stop": 1.0}
    later = budget.check(1.3, 900.0)
    assert later.stop and not later.newly_stopped and later.messages == ()
    summary = budget.summary()
    assert summary["stopped"] is True and summary["reason"] == decision.reason
    assert summary["limits"] == {"co2eq_g": 800.0} and summary["used"]["co2eq_g"] == 900.0
    assert summary["warnings"][-1] == decision.messages[0]  # as said, the stop with it


def test_a_jump_straight_past_the_limit_gives_only_the_limit_message():
    budget = Budget(kwh=1.0)
    assert budget.check(1.1, None).crossed == ("kwh:limit",)


def test_the_prediction_stops_only_when_the_lower_end_of_its_interval_exceeds_the_limit():
    budget = Budget(kwh=1.0, on_exceed="stop")
    # Central above the limit, interval still includes it: one warning, no stop.
    maybe = budget.check(0.3, 30.0, prediction(1.1, 0.95, 1.25))
    assert maybe.crossed == ("kwh:predicted_central",) and not maybe.stop
    assert "may exceed" in maybe.messages[0] and "(95 % interval 0.95-1.25)" in maybe.messages[0]
    assert budget.check(0.35, 35.0, prediction(1.12, 0.97, 1.27)).messages == ()
    sure = budget.check(0.4, 40.0, prediction(1.21, 1.10, 1.30))
    assert sure.stop and sure.newly_stopped
    assert sure.reason == "predicted energy 1.21 kWh (95 % interval 1.1-1.3) exceeds the budget of 1 kWh"


def test_nan_prediction_and_missing_totals_are_ignored_not_errors():
    budget = Budget(kwh=1.0, co2eq_g=100.0, on_exceed="stop")
    decision = budget.check(NAN, None, NO_PREDICTION)
    assert decision == BudgetDecision(messages=(), crossed=(), stop=False, newly_stopped=False, reason=None, used_fraction=0.0)
    assert budget.check(0.1, 10.0, None).stop is False
    assert budget.check(0.1, 10.0, {}).stop is False


def test_the_co2eq_prediction_carries_the_energy_interval_over():
    budget = Budget(co2eq_g=100.0, on_exceed="stop")
    # 1.21 kWh at 100 g/kWh: 121 g, interval 110-130 g, all above 100 g.
    decision = budget.check(0.4, 40.0, prediction(1.21, 1.10, 1.30, g_per_kwh=100.0))
    assert decision.stop
    assert decision.reason == "predicted co2eq_g 121 g (95 % interval 110-130) exceeds the budget of 100 g"


def test_both_limits_the_larger_share_is_the_used_fraction():
    budget = Budget(kwh=2.0, co2eq_g=100.0)
    decision = budget.check(1.0, 85.0)
    assert decision.used_fraction == pytest.approx(0.85)
    assert decision.crossed == ("co2eq_g:warn_at",)


def test_warn_at_none_gives_no_early_warning():
    budget = Budget(kwh=1.0, warn_at=None)
    assert budget.check(0.99, 0.0).messages == ()


def test_emit_issues_each_message_as_an_energy_warning():
    from greencallbacks.meter import EnergyWarning

    decision = Budget(kwh=1.0).check(2.0, 0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decision.emit()
    # Prefixed like every warning of the library; the summary keeps the bare text.
    assert [str(w.message) for w in caught] == ["greencallbacks: energy total 2 kWh reached the budget of 1 kWh"]
    assert caught[0].category is EnergyWarning


def test_resume_continues_the_budget_instead_of_starting_fresh():
    before = Budget(kwh=1.0, on_exceed="stop")
    before.check(0.85, 85.0)  # the 80 % warning is given
    state = before.state_dict()

    resumed = Budget(kwh=1.0, on_exceed="stop")
    assert resumed.load_state_dict(state) is True
    assert resumed.check(0.9, 90.0).messages == ()  # not repeated after the resume
    stop = resumed.check(1.05, 105.0)
    assert stop.newly_stopped

    again = Budget(kwh=1.0, on_exceed="stop")
    again.load_state_dict(resumed.state_dict())
    decision = again.check(1.05, 105.0)  # a resumed, already stopped run stops again at once
    assert decision.stop and not decision.newly_stopped and decision.messages == ()
    assert again.summary()["reason"] == "energy total 1.05 kWh reached the budget of 1 kWh"


def test_resume_with_a_raised_budget_is_judged_afresh_on_the_run_totals():
    old = Budget(kwh=1.0, on_exceed="stop")
    old.check(1.05, 105.0)
    raised = Budget(kwh=2.0, on_exceed="stop")
    assert raised.load_state_dict(old.state_dict()) is False
    assert raised.stopped is False and raised.used["kwh"] == 1.05
    assert raised.check(1.1, 110.0).stop is False


def test_state_round_trips_and_rejects_foreign_state():
    budget = Budget(kwh=1.0, co2eq_g=50.0, on_exceed="stop", warn_at=0.5)
    budget.check(0.6, 20.0)
    copy = Budget(kwh=1.0, co2eq_g=50.0, on_exceed="stop", warn_at=0.5)
    copy.load_state_dict(budget.state_dict())
    assert copy.state_dict() == budget.state_dict()
    with pytest.raises(ValueError, match="not a Budget state"):
        copy.load_state_dict({"epoch": 3})


def test_a_confident_prediction_is_not_followed_by_a_may_exceed_warning():
    budget = Budget(kwh=1.0)
    assert budget.check(0.3, 0.0, prediction(1.3, 1.1, 1.5)).crossed == ("kwh:predicted",)
    assert budget.check(0.4, 0.0, prediction(1.05, 0.9, 1.2)).messages == ()


def test_state_is_plain_json_for_every_framework_checkpoint():
    import json

    budget = Budget(kwh=1.0, co2eq_g=80.0, on_exceed="stop")
    budget.check(0.9, 85.0, prediction(1.21, 1.10, 1.30))
    restored = Budget(kwh=1.0, co2eq_g=80.0, on_exceed="stop")
    assert restored.load_state_dict(json.loads(json.dumps(budget.state_dict()))) is True
    assert restored.summary() == budget.summary()
    assert restored.check(0.95, 86.0).stop


def test_the_summary_counts_the_final_totals_without_warning_of_them():
    budget = Budget(kwh=1.0)
    budget.check(0.5, 50.0, NO_PREDICTION)
    final = budget.summary(energy_kwh=0.9, co2eq_g=None)
    assert final["used"] == {"kwh": 0.9} and final["used_fraction"] == pytest.approx(0.9)
    assert final["warnings"] == [] and budget.used == {"kwh": 0.5}  # reported, not judged
    assert budget.summary(energy_kwh=NAN)["used"] == {"kwh": 0.5}  # an unknown total changes nothing


def test_after_a_crash_the_summary_budget_agrees_with_the_run_total(tmp_path):
    # The last check is at an epoch's end; the crashed epoch after it must be in the summary's use.
    import json

    from greencallbacks.meter import Meter
    from greencallbacks.session import EnergySession
    from greencallbacks.sensors.base import Kind
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    clock = FakeClock()
    session = EnergySession(intensity=100.0, pue=1.0, output_dir=tmp_path, budget=Budget(kwh=0.01), embodied=False)
    meter = Meter([ScriptedSensor("gpu0", clock, power_w=3600.0, kind=Kind.GPU)], fallback=None, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    session.tracker.start(meter)
    session.tracker.begin("train", 0)
    clock.advance(2.0)  # 2 Wh
    session.tracker.end("train")
    session.check_budget()
    session.tracker.begin("train", 1)
    clock.advance(3.0)  # 3 Wh, then the epoch fails
    session.stop(failed=True)
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(0.005)
    assert summary["budget"]["used"]["kwh"] == pytest.approx(summary["energy_kwh"])
    assert summary["budget"]["used_fraction"] == pytest.approx(0.5)
    assert summary["budget"]["warnings"] == []  # the run is over: reported, not warned of


def test_a_step_log_that_reaches_the_budget_stops_there_judged_on_every_ranks_part(tmp_path):
    """The session's step-log check (``live_metrics``) stops training there (the adapter ends it
    after that step; a fine-tune of one long epoch overran by up to an epoch). On two ranks it
    judges the open parts summed over the ranks (``Tracker.live``'s gather), which every rank
    holds alike; rank 0's part alone is below the limit here."""
    import types

    from greencallbacks.meter import Meter
    from greencallbacks.sensors.base import Kind
    from greencallbacks.session import EnergySession
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    said_at_step, gathered = {}, []
    rank_1 = (1800.0, 0.05, 900.0)  # rank 1's open part so far: 0.5 Wh (J at PUE 1), its grams, its power
    for world_size, limit in ((1, 0.001), (2, 0.0022)):
        clock = FakeClock()
        session = EnergySession(intensity=100.0, pue=1.0, output_dir=tmp_path / str(world_size),
                                budget=Budget(kwh=limit, on_exceed="stop"), embodied=False)
        session.tracker.start(Meter([ScriptedSensor("gpu0", clock, power_w=3600.0, kind=Kind.GPU)], fallback=None,
                                    clock=clock, wall_clock=lambda: clock() + 1.7e9))
        session.tracker.begin("train", 0)
        clock.advance(2.0)  # 2 Wh on this rank, at a step log
        local = session.tracker.reducer
        if world_size == 2:
            session.tracker.reducer = types.SimpleNamespace(
                world_size=2, rank=0, gather_floats=lambda mine: gathered.append(mine) or [mine, rank_1])
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            values = session.live_metrics()
        session.tracker.reducer = local
        said_at_step[world_size] = [str(w.message) for w in said]
        assert session.budget_stops_training
        assert values["energy_kwh_total"] == pytest.approx(0.002 + (world_size - 1) * 0.0005, rel=1e-12)
        session.tracker.end("train")
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            assert session.check_budget()  # the epoch end stops too (a stopped budget keeps answering so)
        assert not [w for w in said if "stopping" in str(w.message)]  # said once
        session.stop()
    assert gathered == [pytest.approx((7200.0, 0.2, 3600.0), rel=1e-9)]
    assert said_at_step == {1: ["greencallbacks: energy total 0.002 kWh reached the budget of 0.001 kWh; stopping training"],
                            2: ["greencallbacks: energy total 0.0025 kWh reached the budget of 0.0022 kWh; stopping training"]}


# ------------------------------------------------- warnings given after the checkpoint, then a crash
LIMIT_KWH = 0.01  # the scripted GPU draws 3600 W: 0.001 kWh per fake second


def _session(tmp_path, clock, budget: Budget | None = None):
    from greencallbacks.sensors.base import Kind
    from greencallbacks.session import EnergySession
    from tests.fakes.scripted import ScriptedSensor

    sensor = ScriptedSensor("gpu0", clock, power_w=3600.0, kind=Kind.GPU)
    return EnergySession(intensity=100.0, pue=1.0, output_dir=tmp_path, sensors=[sensor], embodied=False,
                         budget=budget or Budget(kwh=LIMIT_KWH, warn_at=0.5))


def _epoch(session, clock, epoch: int, seconds: float) -> None:
    session.tracker.begin("train", epoch)
    clock.advance(seconds)
    session.tracker.end("train")


def _budget_warnings(action) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught if "budget" in str(w.message)]


def _crashed_after_a_warning_past_its_checkpoint(tmp_path, clock, *, warn_at_epoch_end: bool) -> dict:
    """Epoch 0 (40 %), a checkpoint, then 60 % warned of in epoch 1 (at a step log, or at its end),
    then a failure. Returns the checkpoint's state."""
    session = _session(tmp_path, clock)
    session.start()
    _epoch(session, clock, 0, 4.0)
    assert _budget_warnings(session.check_budget) == []
    state = session.state_dict()
    if warn_at_epoch_end:
        _epoch(session, clock, 1, 2.0)
        said = _budget_warnings(session.check_budget)
        session.tracker.begin("train", 2)
    else:
        session.tracker.begin("train", 1)
        clock.advance(2.0)
        said = _budget_warnings(session.live_metrics)
    assert said == ["greencallbacks: energy total 0.006 kWh is 60 % of the budget of 0.01 kWh"]
    session.stop(failed=True)
    return state


def test_a_warning_given_after_the_checkpoint_is_not_repeated_after_a_crash_and_the_summary_keeps_it(tmp_path):
    import json

    from tests.fakes.scripted import FakeClock

    clock = FakeClock()
    state = _crashed_after_a_warning_past_its_checkpoint(tmp_path, clock, warn_at_epoch_end=False)
    resumed = _session(tmp_path, clock)
    resumed.start()
    resumed.load_state_dict(state)  # Lightning's order: restored after the start
    _epoch(resumed, clock, 1, 2.0)  # 0.008 kWh: past 50 %, which was warned of before the crash
    assert _budget_warnings(resumed.check_budget) == []
    _epoch(resumed, clock, 2, 3.0)
    assert _budget_warnings(resumed.check_budget) == [
        "greencallbacks: energy total 0.011 kWh reached the budget of 0.01 kWh"
    ]
    resumed.stop()
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["attempts"] == 2
    assert summary["budget"]["warnings"] == [
        "energy total 0.006 kWh is 60 % of the budget of 0.01 kWh",
        "energy total 0.011 kWh reached the budget of 0.01 kWh",
    ]


def test_a_process_killed_outright_leaves_its_epoch_end_warnings_in_the_records(tmp_path):
    # Killed, it writes no summary: the totals of its records at each epoch end tell what was judged.
    import json

    from tests.fakes.scripted import FakeClock

    clock = FakeClock()
    state = _crashed_after_a_warning_past_its_checkpoint(tmp_path, clock, warn_at_epoch_end=True)
    (tmp_path / "energy-summary.json").unlink()
    resumed = _session(tmp_path, clock)
    resumed.load_state_dict(state)  # Keras' and HF's order: restored before the start
    resumed.start()
    _epoch(resumed, clock, 1, 2.0)
    assert _budget_warnings(resumed.check_budget) == []
    resumed.stop()
    summary = json.loads((tmp_path / "energy-summary.json").read_text())
    assert summary["budget"]["warnings"] == ["energy total 0.006 kWh is 60 % of the budget of 0.01 kWh"]


@pytest.mark.parametrize("killed", [False, True])
def test_a_resume_into_another_output_dir_recalls_the_warnings_given_where_the_run_was(tmp_path, killed):
    """One directory per job: the earlier attempt's summary and records are in its own directory,
    and the resume read only the new one: a warning already given came again, and the summary,
    which covers the whole run, lost the earlier attempt's warnings."""
    import json

    from tests.fakes.scripted import FakeClock

    clock = FakeClock()
    state = _crashed_after_a_warning_past_its_checkpoint(tmp_path, clock, warn_at_epoch_end=killed)
    if killed:
        (tmp_path / "energy-summary.json").unlink()
    resumed = _session(tmp_path / "next", clock)
    resumed.start()
    resumed.load_state_dict(state)
    _epoch(resumed, clock, 1, 2.0)
    assert _budget_warnings(resumed.check_budget) == []
    resumed.stop()
    summary = json.loads((tmp_path / "next" / "energy-summary.json").read_text())
    assert summary["budget"]["warnings"] == ["energy total 0.006 kWh is 60 % of the budget of 0.01 kWh"]


def test_warnings_of_other_limits_are_not_recalled(tmp_path):
    # Raised to go on: the summary's warnings were of the old limit; the new one warns afresh.
    from tests.fakes.scripted import FakeClock

    clock = FakeClock()
    state = _crashed_after_a_warning_past_its_checkpoint(tmp_path, clock, warn_at_epoch_end=False)
    raised = _session(tmp_path, clock, Budget(kwh=0.012, warn_at=0.5))
    raised.start()
    raised.load_state_dict(state)
    _epoch(raised, clock, 1, 2.0)
    assert _budget_warnings(raised.check_budget) == [
        "greencallbacks: energy total 0.008 kWh is 67 % of the budget of 0.012 kWh"
    ]
    raised.stop()


def test_recall_knows_every_threshold_from_its_message():
    given = Budget(kwh=1.0, co2eq_g=100.0)
    given.check(0.85, 10.0, prediction(1.1, 0.95, 1.25))  # kwh: 80 % and "may exceed"
    given.check(0.9, 101.0)  # co2eq_g: reached
    recalled = Budget(kwh=1.0, co2eq_g=100.0)
    recalled.recall([*given.summary()["warnings"], "not a budget's warning"])
    assert recalled.state_dict()["given"] == given.state_dict()["given"]
    assert recalled.summary()["warnings"] == given.summary()["warnings"]
    assert recalled.check(0.95, 105.0, prediction(1.1, 0.95, 1.25)).messages == ()
    sure = Budget(kwh=1.0)
    sure.recall(["predicted energy 1.21 kWh (95 % interval 1.1-1.3) exceeds the budget of 1 kWh"])
    assert sure.check(0.5, 0.0, prediction(1.1, 0.95, 1.25)).messages == ()  # no "may exceed" after it
    energy_only = Budget(kwh=1.0)
    energy_only.recall(["co2eq_g total 101 g reached the budget of 100 g"])  # no CO2eq limit here
    assert energy_only.summary()["warnings"] == []


def test_the_summary_says_where_the_budget_stopped_the_run_and_a_recall_reads_it():
    # The summary listed "reached the budget" without "; stopping training": a paper's appendix
    # quoting it hid that the run was cut short.
    stopped = Budget(kwh=1.0, on_exceed="stop")
    stopped.check(0.9, None)
    stopped.check(1.05, None)
    said = ["energy total 0.9 kWh is 90 % of the budget of 1 kWh",
            "energy total 1.05 kWh reached the budget of 1 kWh; stopping training"]
    assert stopped.summary()["warnings"] == said
    recalled = Budget(kwh=1.0, on_exceed="stop")
    recalled.recall(said)  # the previous attempt's summary, its checkpoint saved before the stop
    resumed = recalled.check(1.1, None)
    assert resumed.messages == ("energy total 1.1 kWh reached the budget of 1 kWh; stopping training",)
    # Both stops are listed: the attempt that stopped and this one, which stopped again.
    assert recalled.summary()["warnings"] == [*said, resumed.messages[0]]
