"""Step values under DDP are a collective: ``Tracker.live`` sums every rank's open part in a gloo
gather at each logging step, and a budget reached there stops every rank at that step. Real
two-rank runs on CPU, Lightning's DDP and the HF Trainer under torchrun
(tests/distributed_live_script.py), whose scripted devices cost exactly 1 Wh a batch a rank on a
fake clock: every step value is twice the fake seconds a rank has run, plus the attempts before.

In flows that move the logging steps around (accumulation, several optimizers' steps a batch,
evaluations between logging steps, max_steps inside an epoch, a resume) both ranks make the same
gathers and hold the same values, each one exact, and rank 0's logger received them; a rank that
fails before a gather leaves the other failing, not waiting; a budget stops both at the same step.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greencallbacks.ledger import read_run_records
from test_lightning import csv_scalars
from tests.test_distributed_everyday import check_summary

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SCRIPT = Path(__file__).with_name("distributed_live_script.py")
REPO = Path(__file__).resolve().parents[1]
INTENSITY = 100.0  # gCO2eq/kWh, the script's
TIMEOUT = 120  # a rank waiting in a gather the other skipped hangs until gloo's own timeout (30 min)


def lightning(out: Path, config: dict) -> tuple[subprocess.CompletedProcess, list[dict]]:
    pytest.importorskip("lightning", reason="lightning is not installed: the DDP tests need it")
    env = {**os.environ, "PYTHONWARNINGS": "ignore,always:greencallbacks", "OMP_NUM_THREADS": "1"}  # ours shown
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), json.dumps(config)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=out)
    return done, [json.loads((out / f"{config['name']}.rank{r}.json").read_text()) for r in range(2)]


def hf(out: Path, config: dict) -> tuple[subprocess.CompletedProcess, list[dict]]:
    pytest.importorskip("transformers")
    from tests.test_hf_distributed import torchrun

    done = torchrun(SCRIPT, out, out, json.dumps(config), timeout=TIMEOUT, PYTHONWARNINGS="ignore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done, [json.loads((out / f"{config['name']}.rank{r}.json").read_text()) for r in range(2)]


def exact_steps(ranks: list[dict], before_kwh: float = 0.0) -> list[tuple[int, float]]:
    """Both ranks' step values, checked alike and exact: (global step, energy_kwh_total) of each."""
    assert ranks[0]["live"] == ranks[1]["live"]  # the same steps, the same bits: the budget judges alike
    assert ranks[0]["gathered"] == ranks[1]["gathered"] and len(ranks[0]["gathered"]) == len(ranks[0]["live"])
    steps = []
    for live in ranks[0]["live"]:
        kwh, seconds = live["values"]["energy_kwh_total"], live["seconds"]
        assert kwh == pytest.approx(before_kwh + 2 * seconds / 1000, rel=1e-12), live  # 1 Wh a second a rank
        assert live["values"]["co2eq_g_total"] == pytest.approx(kwh * INTENSITY, rel=1e-12), live
        steps.append((live["step"], kwh))
    return steps


def logged_steps(out: Path, name: str) -> list[float]:
    """The step values rank 0's CSV logger received, checked at Lightning's own step points."""
    (metrics,) = (out / "csv" / name).glob("version_*/metrics.csv")
    with open(metrics, newline="") as handle:  # a row of the epoch's values carries its energy_kwh
        points = [(int(r["step"]), float(r["energy_kwh_total"])) for r in csv.DictReader(handle)
                  if r.get("energy_kwh_total") and not r.get("energy_kwh")]
    assert {s for s, _ in points} <= {s for s, _ in csv_scalars(metrics)["step_loss"]}, points
    return [v for _, v in points]


def run_kwh(directory: Path, before_kwh: float, ranks: list[dict]) -> float:
    """The run's summary: its records' sum, and exactly every second both ranks ran."""
    records = read_run_records(ranks[0]["run_id"], [directory])  # with the parts a failing rank wrote apart
    check_summary(directory, records)
    summary = json.loads((directory / "energy-summary.json").read_text())
    assert summary["energy_kwh"] == pytest.approx(before_kwh + 2 * ranks[0]["seconds"] / 1000, rel=1e-12)
    return summary["energy_kwh"]


@pytest.mark.parametrize("flow", ["accumulation", "manual"])
def test_lightning_step_values_are_both_ranks_energy_exactly(tmp_path, flow):
    """``accumulation``: 5 batches a rank an epoch, 2 a step (the last alone), validation every 2
    batches, max_steps=7 inside epoch 2. ``manual``: two optimizers stepped at every batch
    (global_step goes up 2 a batch), 4 batches an epoch, validation at half of it, a step log
    every 3 batches, and a budget that only warns: it is passed at step 18, and both go on."""
    configs = {
        "accumulation": {"trainer": {"accumulate_grad_batches": 2, "val_check_interval": 2, "max_steps": 7}},
        "manual": {"manual": True, "budget": [0.05, "warn"],
                   "trainer": {"log_every_n_steps": 3, "limit_train_batches": 4, "val_check_interval": 0.5}},
    }
    done, ranks = lightning(tmp_path, {"name": flow, **configs[flow]})
    assert done.returncode == 0, done.stderr[-3000:]
    steps = exact_steps(ranks)
    if flow == "accumulation":
        assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6, 7] and ranks[0]["step"] == ranks[1]["step"] == 7
    else:
        assert [s for s, _ in steps] == [6, 12, 18, 24] and not any(d["should_stop"] for d in ranks)
        assert [kwh for _, kwh in steps] == pytest.approx([0.010, 0.030, 0.054, 0.064], rel=1e-12)
    assert logged_steps(tmp_path, flow) == [kwh for _, kwh in steps]
    kwh = run_kwh(tmp_path / "energy", 0.0, ranks)
    assert steps[-1][1] <= kwh
    if flow == "manual":
        budget = json.loads((tmp_path / "energy" / "energy-summary.json").read_text())["budget"]
        assert not budget["stopped"] and budget["reason"] == "energy total 0.054 kWh reached the budget of 0.05 kWh"
        assert done.stderr.count("reached the budget of 0.05 kWh") == 1  # said once, by rank 0


def test_lightning_a_rank_failing_before_the_gather_then_resumes_stopped_by_a_budget_at_a_step(tmp_path):
    """Rank 1 raises at step 3's batch end before the energy callback's gather: rank 0, waiting in
    it, fails as the peer goes (seconds, not gloo's half hour). Resumed on two ranks from step 2's
    checkpoint with a 0.025 kWh budget, the step values go on from the failed attempt's 0.006 kWh
    and reach the budget past epoch 0's end on both ranks, which stop there after its checkpoint. Resumed
    from that checkpoint, both stop before any batch: no gather."""
    failed, ranks = lightning(tmp_path, {"name": "failed", "raise_at": 3, "ckpt_every": 2})
    assert failed.returncode != 0 and "by peer" in failed.stderr, failed.stderr[-3000:]
    assert exact_steps(ranks) == [(1, pytest.approx(0.002)), (2, pytest.approx(0.004))]
    before = run_kwh(tmp_path / "energy", 0.0, ranks)
    assert before == pytest.approx(0.006, rel=1e-12)  # 3 batches of both ranks (rank 1 failed in the third)

    resumed, ranks = lightning(tmp_path, {"name": "resumed", "resume": str(tmp_path / "steps" / "step=2.ckpt"),
                                          "budget": [0.025, "stop"], "ckpt_every": 1})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = exact_steps(ranks, before)
    # Step 6 (Lightning 2.2-2.4 run one batch of the resumed epoch again: step 7), past the epoch's end.
    (stop, kwh), below = steps[-1], [kwh for _, kwh in steps[:-1]]
    assert steps[0] == (3, pytest.approx(before + 0.002)) and max(below) < 0.025 <= kwh == pytest.approx(0.030 if stop == 7 else 0.028)
    assert [s["stops"] for s in ranks[0]["live"]] == [False] * len(below) + [True]
    assert [(d["step"], d["should_stop"]) for d in ranks] == [(stop, True)] * 2
    assert logged_steps(tmp_path, "resumed") == [kwh for _, kwh in steps]
    run_kwh(tmp_path / "energy", before, ranks)

    again, ranks = lightning(tmp_path, {"name": "again", "resume": str(tmp_path / "steps" / f"step={stop}.ckpt"),
                                        "budget": [0.025, "stop"]})
    assert again.returncode == 0, again.stderr[-3000:]
    assert [(d["step"], d["should_stop"], d["live"], d["gathered"]) for d in ranks] == [(stop, True, [], [])] * 2


def hf_steps(ranks: list[dict]) -> list[float]:
    """The step values in rank 0's log_history (the epochs' entries carry ``energy_kwh`` too)."""
    return [h["energy_kwh_total"] for h in ranks[0]["log_history"] if "energy_kwh_total" in h and "energy_kwh" not in h]


def test_hf_step_values_are_both_ranks_energy_exactly_between_evaluations(tmp_path):
    """8 micro-batches a rank an epoch, 3 a step (3, 3, 2: 3 steps an epoch), a log every 2 steps
    and an evaluation every 3, max_steps=7 inside epoch 2: each step value goes out before its
    step's evaluation, each exact."""
    _, ranks = hf(tmp_path, {"name": "steps", "args": {"gradient_accumulation_steps": 3, "logging_steps": 2,
                                                       "eval_strategy": "steps", "eval_steps": 3, "max_steps": 7}})
    steps = exact_steps(ranks)
    expected = [(2, 0.004), (3, 0.006), (4, 0.024), (6, 0.028), (7, 0.046)]  # step 7: evaluated as training ends (4.48+)
    assert steps == [(s, pytest.approx(kwh, rel=1e-12)) for s, kwh in expected[:len(steps)]] and len(steps) >= 4
    assert ranks[0]["step"] == ranks[1]["step"] == 7
    assert hf_steps(ranks) == [kwh for _, kwh in steps]
    assert steps[-1][1] <= run_kwh(tmp_path, 0.0, ranks)


def test_hf_a_budget_reached_at_a_step_log_stops_both_ranks_there_and_a_resume_goes_on(tmp_path):
    """8 steps an epoch, logs every 2, evaluations every 3: 0.015 kWh is reached at step 6's log,
    inside epoch 0, and both ranks stop there. Resumed from step 3's checkpoint, the run has spent
    it already (the first attempt's 0.034 kWh): both stop at the first step log, step 4, whose
    value goes on from all the first attempt spent."""
    args = {"logging_steps": 2, "eval_strategy": "steps", "eval_steps": 3, "save_strategy": "steps", "save_steps": 3}
    _, ranks = hf(tmp_path, {"name": "stopped", "budget": [0.015, "stop"], "args": args})
    steps = exact_steps(ranks)
    assert steps == [(2, pytest.approx(0.004)), (3, pytest.approx(0.006)), (4, pytest.approx(0.014)), (6, pytest.approx(0.018))]
    assert [s["stops"] for s in ranks[0]["live"]] == [False, False, False, True]
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    assert hf_steps(ranks) == [kwh for _, kwh in steps]
    before = run_kwh(tmp_path, 0.0, ranks)
    assert json.loads((tmp_path / "energy-summary.json").read_text())["budget"]["stopped"]

    _, ranks = hf(tmp_path, {"name": "resumed", "budget": [0.015, "stop"], "resume": str(tmp_path / "checkpoint-3"),
                             "args": args})
    assert exact_steps(ranks, before) == [(4, pytest.approx(before + 0.002))]
    assert [s["stops"] for s in ranks[0]["live"]] == [True] and ranks[0]["step"] == ranks[1]["step"] == 4
    assert hf_steps(ranks)[-1] == pytest.approx(before + 0.002, rel=1e-12)
    run_kwh(tmp_path, before, ranks)
