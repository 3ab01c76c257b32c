"""heap: a burst of large buffers goes back to the system once freed (issue 24: a worker
stayed at 360-520 MiB idle after eight 10 MiB bodies)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

MiB = 1024 * 1024
BURST = """
import sys
sys.path.insert(0, "function")
from recognizer import heap
if sys.argv[1] == "fixed":
    assert heap.keep_large_buffers_apart()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
warm = b"x" * (20 * 1024 * 1024)  # freed: glibc's threshold rises past the bodies' size
del warm
base = rss()
bodies, keep = [], []
for _ in range(16):  # bodies, with small long-lived allocations made between them
    bodies.append(b"x" * (10 * 1024 * 1024))
    keep.append(bytes(1000) + bytes([len(keep)]))
del bodies
print(rss() - base)
"""


def kept_after_burst(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", BURST, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(run.stdout)


def test_a_freed_burst_of_bodies_is_returned_to_the_system():
    assert kept_after_burst("default") > 100 * MiB  # what glibc keeps on its own
    assert kept_after_burst("fixed") < 8 * MiB
