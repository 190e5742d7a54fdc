"""Two gloo ranks that gather through TorchReducer and exit at once end cleanly (torch's gloo
workers free the gathered tensors after the interpreter's exit handlers otherwise: SIGABRT)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch.distributed")
pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SCRIPT = textwrap.dedent("""
    import os, sys
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def rank(index, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=index, world_size=2)
        from greencallbacks.distributed import TorchReducer
        reducer = TorchReducer()
        for _ in range(3):  # as at a run's last phase ends: then the rank exits
            reducer.all_gather({"rank": index, "joules": list(range(50))})

    if __name__ == "__main__":
        mp.start_processes(rank, args=(int(sys.argv[1]),), nprocs=2, start_method="spawn")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_that_exit_right_after_their_last_gather_do_not_abort(tmp_path):
    # Without the exit grace, 16 of 38 such runs aborted here (a spawned rank ended with SIGABRT,
    # "terminate called without an active exception"); with it, 0 of 33. Eight runs: all pass
    # by chance without it about once in 80.
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    for attempt in range(8):
        done = subprocess.run([sys.executable, str(script), str(free_port())], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"run {attempt}: {done.stderr[-2000:]}"
