"""bin/demo as a terminal runs it: its own process group, its output in a log file.

`started_demo` waits for the banner and returns the process and what it printed;
`ctrl_c` stops the whole group with SIGINT, as Ctrl-C does, and says how long that took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import ROOT

BANNER = "Press Ctrl-C to stop"


def started_demo(
    log: Path, env: Mapping[str, str], timeout: float = 300
) -> tuple[subprocess.Popen, str]:
    """bin/demo with exactly `env`, writing to `log`; (process, its output up to the banner)."""
    with log.open("wb") as out:
        demo = subprocess.Popen(
            ["bin/demo"],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while BANNER not in log.read_text(errors="replace"):
        if demo.poll() is not None or time.monotonic() > deadline:
            ctrl_c(demo)
            raise AssertionError(
                f"the demo printed no banner in {timeout:.0f} s (exit {demo.returncode}):\n"
                + log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.5)
    return demo, log.read_text(errors="replace")


def ctrl_c(demo: subprocess.Popen) -> float:
    """SIGINT to the demo's process group; seconds until every process of it has exited."""
    start = time.monotonic()
    try:
        os.killpg(demo.pid, signal.SIGINT)
    except ProcessLookupError:
        return 0.0
    try:
        demo.wait(timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the demo did not stop in 90 s:\n{_still_running(demo)}") from None
    while subprocess.run(["pgrep", "-g", str(demo.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() - start < 90, f"still running:\n{_still_running(demo)}"
        time.sleep(0.2)
    return time.monotonic() - start


def _still_running(demo: subprocess.Popen) -> str:
    """The demo's processes, with what each waits on in the kernel: what hung, for the log."""
    listing = ["ps", "-o", "pid,ppid,stat,wchan:24,etime,args", "-g", str(demo.pid)]
    return subprocess.run(listing, capture_output=True, text=True).stdout
