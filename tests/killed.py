"""A child process killed outright (SIGKILL: no handler runs, nothing is written up), as the
out-of-memory killer or a preemption ends a training."""

from __future__ import annotations

import signal
import subprocess
import sys


def killed_after_line(args: list[str], line: str) -> None:
    """Run ``python args...`` until it prints ``line``, then kill it with SIGKILL."""
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
