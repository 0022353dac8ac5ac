"""A service that makes batching observable from outside the server (`gpuserve.testing.batching_app:Batching`).

`hold` keeps its executor busy until the test creates the gate file it names,
so tests can force requests to queue without guessing at timings. Every call
of a method is journaled (one JSON line, appended atomically) to
`$BATCH_APPS_DIR/journal.jsonl`: the test reads exactly which items the model
saw, in which batches, on which executor and process, even in process isolation.
"""

import json
import os
import threading
import time
from pathlib import Path

import gpuserve

DIR = Path(os.environ.get("BATCH_APPS_DIR", "."))
FITS = 4  # `squeeze` runs out of memory on batches larger than this

_running: set[tuple[int, int]] = set()
_running_lock = threading.Lock()


def where() -> dict:
    ctx = gpuserve.context()
    return {"worker": ctx.worker_index, "instance": ctx.instance,
            "device": ctx.planned[0].label, "pid": os.getpid()}


def journal(api: str, items: list[str]) -> None:
    line = json.dumps({"api": api, "items": list(items), **where()}) + "\n"
    fd = os.open(DIR / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def wait_for_gate(gate: str) -> None:
    path = DIR / gate
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate!r} never opened")
        time.sleep(0.005)


@gpuserve.service(backend="cpu")
class Batching:
    @gpuserve.api
    def hold(self, gate: str) -> dict:
        journal("hold", [gate])
        wait_for_gate(gate)
        return where()

    @gpuserve.api(call_timeout=1.0)
    def stall(self, gate: str) -> dict:
        """`hold` with a call limit of a second: held past it, its replica is given up on and replaced."""
        journal("stall", [gate])
        wait_for_gate(gate)
        return where()

    @gpuserve.api
    def whoami(self) -> dict:
        return where()

    @gpuserve.api
    def opaque(self) -> object:
        return threading.Lock()  # cannot be pickled back from a worker process

    @gpuserve.api(batchable=True, max_batch_size=32)
    def work(self, item: list[str]) -> list[dict]:
        ctx = gpuserve.context()
        me = (ctx.worker_index, ctx.instance)
        with _running_lock:
            if me in _running:
                raise RuntimeError(f"executor {me} was handed two batches at once")
            _running.add(me)
        try:
            journal("work", item)
            poisoned = [i for i in item if i.startswith("poison")]
            if poisoned:
                raise ValueError(f"cannot digest {poisoned[0]!r}")
            time.sleep(0.005)
            return [{"item": i, "size": len(item), **where()} for i in item]
        finally:
            with _running_lock:
                _running.discard(me)

    @gpuserve.api(batchable=True, max_batch_size=32)
    def squeeze(self, item: list[str]) -> list[int]:
        journal("squeeze", item)
        if len(item) > FITS:
            raise MemoryError(f"a batch of {len(item)} does not fit")
        return [len(item)] * len(item)

    @gpuserve.api(batchable=True, max_batch_size=32)
    def swallow(self, item: list[str]) -> list[int]:
        """Runs out of memory whenever an item starts with "huge", however few rows come with it."""
        journal("swallow", item)
        if any(i.startswith("huge") for i in item):
            raise MemoryError("a huge item does not fit, even alone")
        return [len(item)] * len(item)

    @gpuserve.api(batchable=True, max_batch_size=1, max_latency_ms=700)
    def timed(self, item: list[str]) -> list[str]:
        journal("timed", item)
        time.sleep(0.2)
        return item

    @gpuserve.api(max_latency_ms=500)
    def warms_up(self, item: str) -> str:
        # Slow for its first three calls (a cold device), then fast.
        journal("warms_up", [item])
        self.warm_calls = getattr(self, "warm_calls", 0) + 1
        if self.warm_calls <= 3:
            time.sleep(0.6)
        return item

    @gpuserve.api(batchable=True, max_batch_size=8)
    def die(self, item: list[str]) -> list[dict]:
        journal("die", item)
        if "die" in item:
            os._exit(1)
        return [where() for _ in item]
