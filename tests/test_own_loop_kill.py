"""A training loop of the user's own, as the README writes it (``with tracker.phase(...)``,
``tracker.add_samples(count_samples(batch))`` per batch, nothing else), killed outright (SIGKILL:
the out-of-memory killer, a preemption) inside an epoch.

Only the adapters asked for ``Tracker.heartbeat``: such a loop left no heartbeat, and lost its whole
open epoch, to a report (90 s of 100 W gone, the run read as one epoch) and to a resume from the
state it saved at the epoch before. ``add_samples`` now asks for it (one clock read when not due):
the epoch is counted up to its last heartbeat, at most ``HEARTBEAT_S`` lost.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.ledger import read_run_records
from greencallbacks.meter import Meter
from greencallbacks.runs import load
from greencallbacks.tracker import HEARTBEAT_S, SUMMARY_FILE, Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor
from tests.killed import killed_after_line

REPO = Path(__file__).resolve().parents[1]
POWER_W = 100.0
RUN = "own-loop"
J_PER_KWH = 3.6e6

# 18 batches of 8 samples, 5 s each (fake clock): 90 s an epoch; killed after 16 batches of epoch 1,
# at 170 s. The heartbeat is due every HEARTBEAT_S (60 s): its last at 120 s, 30 s into epoch 1.
OWN_LOOP = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from greencallbacks import Carbon, Meter, Tracker
    from greencallbacks.samples import count_samples
    from tests.fakes.scripted import FakeClock, ScriptedSensor

    clock = FakeClock()
    meter = Meter([ScriptedSensor("gpu0", clock, power_w={power!r})], fallback=None, clock=clock,
                  wall_clock=lambda: clock() + 1.7e9)
    loader = [[0.0] * 8 for _ in range(18)]
    with Tracker(carbon=Carbon(intensity=200.0), output_dir=sys.argv[1], run_id={run!r}).start(meter) as tracker:
        for epoch in range(3):
            with tracker.phase("train", epoch):
                for i, batch in enumerate(loader):
                    clock.advance(5.0)  # the step
                    tracker.add_samples(count_samples(batch))
                    if epoch == 1 and i == 15:
                        print("at 170 s", flush=True)
                        time.sleep(60)  # killed here
            Path(sys.argv[2]).write_text(json.dumps(tracker.state_dict()))  # the user's checkpoint
    """
)


@pytest.fixture
def killed_loop(tmp_path) -> tuple[Path, dict]:
    script, out, checkpoint = tmp_path / "loop.py", tmp_path / "out", tmp_path / "checkpoint.json"
    script.write_text(OWN_LOOP.format(repo=str(REPO), run=RUN, power=POWER_W))
    killed_after_line([str(script), str(out), str(checkpoint)], "at 170 s\n")
    return out, json.loads(checkpoint.read_text())


def test_a_report_counts_the_killed_epoch_up_to_its_last_heartbeat(killed_loop):
    out, _ = killed_loop
    written = read_run_records(RUN, [out])
    assert [(r.phase, r.epoch) for r in written] == [("train", 0)]

    loaded = load(out)

    assert loaded.unfinished == {RUN}
    (epoch_1,) = [r for r in loaded.records if r.phase == "train" and r.epoch == 1]
    assert epoch_1.carried and epoch_1.partial
    # 80 s ran before the kill; up to the heartbeat at 120 s: 30 s (0 s before).
    assert epoch_1.duration_s == pytest.approx(30.0)
    assert 80.0 - HEARTBEAT_S <= epoch_1.duration_s <= 80.0
    assert epoch_1.energy_kwh * J_PER_KWH == pytest.approx(30.0 * POWER_W)
    assert epoch_1.samples == 6 * 8


def test_a_resume_from_the_loops_own_checkpoint_carries_the_killed_epoch(killed_loop):
    out, state = killed_loop
    clock = FakeClock(5000.0)
    resumed = Tracker(output_dir=out, carbon=Carbon(intensity=200.0))
    resumed.load_state_dict(state)
    with resumed.start(Meter([ScriptedSensor("gpu0", clock, power_w=POWER_W)], fallback=None, clock=clock,
                             wall_clock=lambda: clock() + 1.7e9)):
        with resumed.phase("train", 1):
            clock.advance(90.0)
            resumed.add_samples(144)

    records = read_run_records(RUN, [out])
    summary = json.loads((out / SUMMARY_FILE).read_text())
    keys = [(r.seq, r.attempt) for r in records]
    assert len(keys) == len(set(keys))  # every phase once
    assert summary["energy_kwh"] == pytest.approx(sum(r.energy_kwh for r in records), rel=1e-9)
    assert resumed.total_energy_j == pytest.approx(summary["energy_kwh"] * J_PER_KWH, rel=1e-9)
    trained = [(r.epoch, r.attempt, r.duration_s, r.carried) for r in records if r.phase == "train"]
    assert trained == [(0, 0, 90.0, False), (1, 0, pytest.approx(30.0), True), (1, 1, 90.0, False)]
    assert not list(out.glob("energy-open-*"))  # the run ended: its heartbeats are gone
