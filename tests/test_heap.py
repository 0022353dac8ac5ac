"""The serving process keeps its C heap: freed blocks of body size are reused, not faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from gpuserve.heap import keep_heap

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

CYCLES_COUNTED = 20
# Each cycle gives back and faults in again its 38 MB with glibc's own thresholds: about 9,400 faults of
# 4 KiB pages, or 19 where transparent huge pages back the heap. At least this many show the cycle is there.
GIVEN_BACK = CYCLES_COUNTED * 10
# 64 blocks of 600 KB, as a queue of image bodies, made and freed again and again; the page faults of the
# cycles after the first three, in a fresh interpreter (the thresholds are the whole process's).
CYCLES = """
import resource, sys
from gpuserve.heap import keep_heap
kept = keep_heap() if sys.argv[1] == "keep" else False
def cycle():
    blocks = [bytearray(600_000) for _ in range(64)]  # zero-filled: every page touched
    del blocks
for _ in range(3):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[2])):
    cycle()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(how: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CYCLES, how, str(CYCLES_COUNTED)], env={**clean, **env},
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    return out[0], int(out[1])


def test_blocks_freed_are_reused_without_faulting_their_pages_in_again():
    kept, faults = _faults("keep")
    given_back, default_faults = _faults("default")
    assert kept == "True" and given_back == "False"
    assert default_faults >= GIVEN_BACK  # glibc's own thresholds: the heap shrinks and regrows each cycle
    assert faults < default_faults / 20, (faults, default_faults)


def test_an_operators_own_malloc_settings_are_left_to_rule():
    assert keep_heap({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is False
    assert keep_heap({"MALLOC_TRIM_THRESHOLD_": "0"}) is False
    kept, faults = _faults("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")
    assert kept == "False" and faults >= GIVEN_BACK
