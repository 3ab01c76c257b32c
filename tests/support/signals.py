"""Send a signal to one thread of another process that is not its main thread.

`kill` lets the kernel pick any thread that does not block the signal. Python runs its
handlers only in the main thread, when that thread next wakes, so a process whose main
thread sleeps without a timeout never handles a signal that reached another thread.
tgkill(2) makes that case happen on purpose instead of by chance. `hammered` makes the
other chance certain: a second signal landing while the first one's handler runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

_SYS_TGKILL = 234  # x86_64


def signal_other_thread(pid: int, signum: signal.Signals) -> int:
    """tgkill `signum` to a thread of `pid` other than its main one; that thread's id."""
    others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
    if not others:
        raise RuntimeError(f"process {pid} has no thread besides its main one")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_TGKILL, pid, others[-1], int(signum)) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")
    return others[-1]


def exits_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/stat")
        if not status.exists() or status.read_text().split()[2] == "Z":
            return True
        time.sleep(0.1)
    return False


def hammered(process: subprocess.Popen, seconds: float) -> None:
    """SIGINT and SIGTERM, alternately and as fast as possible, until it exits or time is up."""
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                os.kill(process.pid, signum)
            except ProcessLookupError:
                return
