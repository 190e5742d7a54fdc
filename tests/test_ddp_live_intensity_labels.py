"""A DDP record sums every rank's part, each priced by that rank's own carbon source: where one
rank's live API request failed (the provider's rate limit answering the second of two requests made
at once), its part is priced at the static fallback and the other's at the live value. The summed
record must say both, as a record of one rank cut at a failed bucket does: it said only rank 0's
source and licence (until 2026-12-06), so a fallback on rank 1 was in the figures and nowhere in
the records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from greencallbacks.carbon.intensity import country_intensity
from greencallbacks.records import Record, combine_ranks, read_records
from tests.fakes.loopback import LoopbackServer, QuietHandler

LIVE_G_PER_KWH = 100.0


class RateLimited(QuietHandler):
    """Electricity Maps' history endpoint, answering one request and refusing the rest (HTTP 429)."""

    answered = 0
    lock = threading.Lock()

    def do_GET(self):
        with self.lock:
            type(self).answered += 1
            first = type(self).answered == 1
        if not first:
            self.send_error(429, "Too Many Requests")
            return
        now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        history = [{"zone": "DE", "carbonIntensity": LIVE_G_PER_KWH,
                    "datetime": (now - timedelta(hours=h)).isoformat().replace("+00:00", "Z")} for h in range(24, -1, -1)]
        body = json.dumps({"zone": "DE", "history": history}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_ddp_record_names_every_ranks_intensity_source(tmp_path):
    pytest.importorskip("lightning", reason="lightning is not installed: the DDP test needs it")
    RateLimited.answered = 0
    server = LoopbackServer(RateLimited)
    try:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        env.pop("LOCAL_RANK", None)
        script = Path(__file__).with_name("ddp_live_intensity_script.py")
        done = subprocess.run([sys.executable, str(script), str(tmp_path), server.url], capture_output=True, text=True,
                              timeout=180, env=env, cwd=tmp_path)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-4000:]
    assert RateLimited.answered == 2  # one request a rank; the second refused
    records = [r for r in read_records(tmp_path / "energy") if r.energy_kwh > 0]
    assert records and all(r.ranks == 2 for r in records)
    static = country_intensity("DE").g_per_kwh
    for r in records:
        # Each rank billed half of it: one half at the live value, the other at the fallback.
        assert r.co2eq_g == pytest.approx(r.energy_kwh / 2 * (LIVE_G_PER_KWH + static), rel=1e-9)
        assert "(live API), time-weighted mean" in r.intensity_source, r.intensity_source
        assert "fallback: static table" in r.intensity_source and "HTTP 429" in r.intensity_source, r.intensity_source
        terms = r.intensity_licence.split("; ")  # rank 0's first: whichever rank was refused
        assert sorted(terms) == sorted(["Electricity Maps API terms", country_intensity("DE").licence]), terms


def test_combined_ranks_keep_each_ranks_intensity_source_and_licence_once():
    def part(rank, source, licence):
        return Record(run_id="r", phase="train", epoch=0, seq=1, start_time="2026-01-01T00:00:00Z", duration_s=1.0,
                      samples=4, it_energy_kwh=0.001, energy_kwh=0.001, co2eq_g=0.1, intensity_gco2eq_per_kwh=100.0,
                      intensity_source=source, intensity_licence=licence, pue=1.0, energy_j_per_sample=None,
                      co2eq_g_per_sample=None,
                      components=[{"name": f"gpu{rank}", "kind": "gpu", "energy_j": 3600.0, "rank": rank}])

    live = part(0, "Electricity Maps DE (live API), time-weighted mean", "Electricity Maps API terms")
    failed = part(1, "Electricity Maps DE (live API) fallback: static table (Ember 2024, DEU), because: HTTP 429",
                  "CC-BY-4.0")
    again = part(2, live.intensity_source, live.intensity_licence)
    combined = combine_ranks([[live], [failed], [again]])[0]
    assert combined.intensity_source == f"{live.intensity_source}; {failed.intensity_source}"
    assert combined.intensity_licence == "Electricity Maps API terms; CC-BY-4.0"
    same = combine_ranks([[live], [again]])[0]
    assert same.intensity_source == live.intensity_source and same.intensity_licence == live.intensity_licence
