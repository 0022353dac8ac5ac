"""This process's memory against the machine's, from the OS (no psutil needed)."""

from __future__ import annotations

import os
import resource
import sys

from gpuserve.backend import MemoryInfo


def total_memory() -> int:
    """Physical RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_memory() -> int:
    """This process's resident set in bytes."""
    try:
        with open("/proc/self/statm") as statm:  # Linux: current RSS in pages, second field
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        # Elsewhere only the peak is at hand: kibibytes on Linux, bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def host_memory() -> MemoryInfo:
    return MemoryInfo(used=resident_memory(), total=total_memory())
