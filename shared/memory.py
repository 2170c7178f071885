"""Keep freed memory in the process, so that every frame reuses the memory of the last one.

glibc's ``malloc`` serves blocks of more than 32 MiB (at most) with ``mmap`` and gives them
back to the system on ``free``. A codec transform's activations at H/2 are that large for
a 1280×720 frame and for any batch of two 640×480 frames: every frame then faulted its
activations in again and the kernel zeroed them again — 0.1 to 1 s of kernel time per
1280×720 frame with adapters, depending on the kernel's state. :func:`keep_freed_memory` makes ``malloc`` serve
every block from its heap (``M_MMAP_MAX`` = 0), keep freed memory up to
:data:`TRIM_THRESHOLD` (``M_TRIM_THRESHOLD``) and use one heap for all threads
(``M_ARENA_MAX`` = 1): the heaps of other threads are unmapped whenever they empty, so the
edge client's encoder thread would still fault its memory in on every frame, and each
thread's heap would hold its own peak. Once the heap has settled (a few frames) the encoder
takes no page faults. Resident memory then stays at the per-frame peak plus the heap's
fragmentation. It changes where memory comes from, never what is computed.

The ``icmh``, ``edge-client`` and ``cloud-server`` commands call it at start;
``ICMH_KEEP_FREED_MEMORY=0`` turns it off. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Optional

ENV = "ICMH_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30  # bytes of free memory at the top of the heap kept before any goes back


def glibc() -> Optional[ctypes.CDLL]:
    """The process's C library if it is glibc (which has ``mallopt``), else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` serve large blocks from one heap for all threads and keep freed ones; True if set.

    False where ``ICMH_KEEP_FREED_MEMORY=0`` or the C library is not glibc.
    """
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    libc = glibc()
    if libc is None:
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all([libc.mallopt(option, value) == 1 for option, value in settings])
