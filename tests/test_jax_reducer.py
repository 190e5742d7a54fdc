"""The Keras adapter's reducer for JAX multi-process jobs (``jax.distributed``), on two real CPU
processes: objects and floats gathered in rank order, the same on both, floats exactly (JAX
without x64 would carry an array of them as float32)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

PROCESS = r"""
import json, sys
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=rank)
from greencallbacks.keras._backend import JaxProcessReducer
reducer = JaxProcessReducer()
gathered = {"rank": reducer.rank, "world_size": reducer.world_size, "objects": reducer.all_gather({"rank": rank}),
            "floats": reducer.gather_floats((1.0 + rank, 0.1, 1e7 / 3)), "measures_host": reducer.measures_host}
open(f"{out}/rank{rank}.json", "w").write(json.dumps(gathered))
jax.distributed.shutdown()
"""


def test_two_jax_processes_gather_objects_and_floats_in_rank_order(tmp_path):
    script = tmp_path / "process.py"
    script.write_text(PROCESS)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**__import__("os").environ, "PYTHONPATH": src, "JAX_PLATFORMS": "cpu"}
    processes = [subprocess.Popen([sys.executable, str(script), str(rank), port, str(tmp_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, gathered in enumerate(ranks):
        assert gathered["rank"] == rank and gathered["world_size"] == 2
        assert gathered["objects"] == [{"rank": 0}, {"rank": 1}]
        assert gathered["floats"] == [[1.0, 0.1, 1e7 / 3], [2.0, 0.1, 1e7 / 3]]  # exactly: float64 through JSON
    assert [gathered["measures_host"] for gathered in ranks] == [True, False]  # one host: its first process measures it
