"""The C heap of a serving process: kept for the next requests instead of given back and faulted in again.

glibc's malloc gives the top of its heap back to the system whenever more than
a threshold is free there, and that threshold follows the largest block freed
so far (twice it). A server with bodies of hundreds of kilobytes in flight then
shrinks and regrows its heap all the time: 602 KB image requests cost 17-29
page faults and about 40 us more system CPU each once a process fell into that
cycle, a seventh of their throughput, and small batched requests a twelfth
(`benchmarks/README.md`). Blocks under 32 MiB now come from the heap and up to
64 MiB stays free at its top; what a burst frees beyond that still goes back.
An operator's own `GLIBC_TUNABLES` malloc settings or `MALLOC_*_` variables
are left to rule.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

MiB = 1 << 20
MMAP_THRESHOLD = 32 * MiB  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 64 * MiB
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from malloc.h
_M_MMAP_THRESHOLD = -3


def keep_heap(environ: Mapping[str, str] = os.environ) -> bool:
    """Set this process's malloc thresholds; False where it is not glibc's malloc or the environment tunes it."""
    if platform.libc_ver()[0] != "glibc":
        return False
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", "") or any(
            name.startswith("MALLOC_") and name.endswith("_") for name in environ):
        return False
    libc = ctypes.CDLL(None)
    # mallopt answers 1 when it took the value; setting either also stops glibc moving them itself.
    return libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
