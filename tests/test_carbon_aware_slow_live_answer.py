"""A carbon-aware pause decided on a live source slower than a boundary waits (0.5 s).

The pause asked the intensity at an instant of a new bucket: the request went out, the answer was
not there within 0.5 s, and the static fallback decided. Electricity Maps answering 100 g/kWh in
0.8 s, under a 200 g/kWh threshold, still paused training a whole check, 300 s, on the static
table's 381 g/kWh for Germany (again at each new 15-minute bucket a check fell in), spending that
much of the delay budget on a clean grid. The pause is
about to idle anyway: above the threshold, it now waits for the answer on its way (up to twice the
source's timeout) and decides on it; a failure still falls back, labelled with its real reason.
The API is served on the loopback address.
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import datetime, timedelta, timezone

import pytest

from greencallbacks.carbon import Carbon
from greencallbacks.carbon.intensity import country_intensity
from greencallbacks.carbon.live import WAIT_AT_BOUNDARY_S, ElectricityMapsSource
from greencallbacks.carbon_aware import CarbonAwarePause
from tests.fakes.loopback import LoopbackServer, QuietHandler

LATE_S = WAIT_AT_BOUNDARY_S + 0.3


class Late(QuietHandler):
    """Electricity Maps' history endpoint, answering after ``LATE_S``: 100 g/kWh, or HTTP ``status``."""

    status = 200

    def do_GET(self):
        time.sleep(LATE_S)
        if self.status != 200:
            self.send_error(self.status, "Internal Server Error")
            return
        now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        history = [{"carbonIntensity": 100, "datetime": (now - timedelta(hours=h)).isoformat()} for h in range(24, -1, -1)]
        body = json.dumps({"zone": "DE", "history": history}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("status", [200, 500])
def test_a_pause_waits_for_a_live_answer_slower_than_a_boundary_before_deciding(status):
    server = LoopbackServer(type("Answers", (Late,), {"status": status}))
    now, slept = [time.time()], []

    def sleep(seconds):  # the pause's waits, on a fake clock
        slept.append(seconds)
        now[0] += seconds

    gate = CarbonAwarePause(threshold_g_per_kwh=200.0, max_delay_s=3600.0, check_every_s=300.0, sleep=sleep,
                            clock=lambda: now[0])
    carbon = Carbon(series=ElectricityMapsSource("DE", token="test-token", base_url=server.url, bucket_s=1e9))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the boundary's "no answer within 0.5 s": tested elsewhere
            paused = gate.maybe_pause(carbon)
    finally:
        server.close()
    if status == 200:
        assert paused == 0.0 and slept == []  # 300 s on the static table's value before
        return
    # A failure still falls back to the static table, which is above the threshold: it pauses,
    # saying the real reason (before: "no answer within 0.5 s").
    assert country_intensity("DE").g_per_kwh > 200.0
    assert paused == 3600.0 and len(gate.pauses) == 1
    assert "HTTP 500" in gate.pauses[0].intensity_source and "no answer within" not in gate.pauses[0].intensity_source
