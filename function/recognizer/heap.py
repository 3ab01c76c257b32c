"""Give a burst's memory back to the system: glibc's malloc, told not to keep it.

glibc serves a large allocation from its own heap once a larger one has been freed (its
mmap threshold rises, up to 32 MiB), and a heap's free memory is only returned from the
top: after eight 10 MiB bodies a worker stayed at 360-520 MiB idle. With the threshold
fixed, every buffer of 256 KiB or more (bodies, images, decoded pixels) is its own
mapping and goes back to the system when freed. Set once in gunicorn's master, before
the workers fork, and inherited by them. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD_BYTES = 256 * 1024


def keep_large_buffers_apart() -> bool:
    """Fix glibc's mmap threshold; False where that cannot be done (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
