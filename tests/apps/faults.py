"""A service that misbehaves on demand, for the fault tests.

Each row of `predict` is a word: `hang` waits until the file
`$BATCH_APPS_DIR/unhang` exists (a call that never returns, until the test
says so), `exit` ends the process at once (`os._exit`), `nap` sleeps a second,
anything else is answered with where it ran. `segfault` crashes its process. The constructor fails while
`$BATCH_APPS_DIR/fail-init` exists. Every call and every build is journaled
(`batching_apps.journal`), so a test knows what ran, where and how often.
"""

import ctypes
import os
import time

import gpuserve
from gpuserve.testing.batching_app import DIR, journal, where

HANG_AT_MOST_S = 600


def act(word: str) -> dict:
    if word == "hang":
        deadline = time.monotonic() + HANG_AT_MOST_S
        while not (DIR / "unhang").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    elif word == "exit":
        os._exit(3)
    elif word == "nap":
        time.sleep(1.0)
    return {"item": word, **where()}


@gpuserve.service(backend="cpu")
class Faults:
    def __init__(self) -> None:
        if (DIR / "fail-init").exists():
            raise RuntimeError("told to fail: fail-init exists")
        journal("init", ["built"])

    @gpuserve.api(batchable=True, max_batch_size=16)
    def predict(self, item: list[str]) -> list[dict]:
        journal("predict", item)
        return [act(word) for word in item]

    @gpuserve.api(call_timeout=1.0)
    def quick(self, word: str) -> dict:
        """Its own call limit: a second."""
        journal("quick", [word])
        return act(word)

    @gpuserve.api(batchable=True, max_batch_size=64, max_latency_ms=300)
    def fixed_cost(self, item: list[str]) -> list[str]:
        """30 ms a call, whatever the batch: a single request's cost says little about a full batch's."""
        time.sleep(0.03)
        return item

    @gpuserve.api
    def segfault(self) -> None:
        """Native code crashing its process, as a faulty extension would."""
        ctypes.string_at(0)

    @gpuserve.api
    def whoami(self) -> dict:
        return where()


@gpuserve.service(backend="cpu", isolation="process")
class FaultsProcess(Faults):
    pass
