"""Scenario `soak`: ten minutes at half the example's capacity, open loop: RSS and latency minute by minute.

The example classifier (threads, its own settings) is measured first at 64
closed-loop clients for a few seconds; `benchmarks.openloop` then sends its
requests at half that rate, whatever the answers, for `SOAK_S` seconds, and
reports each minute's answers by status and p50/p99 (from when each request
was due). The server's RSS is read at the end of each minute. Drift is the
last minute against the first. It is not part of the default run (ten
minutes): ask for it with `--scenarios soak`; `--quick` runs it for seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import ROOT
from benchmarks.apps import ROWS_BODY
from benchmarks.config import RunConfig
from benchmarks.overload import API, example_command, example_env, measure, rss_mib
from benchmarks.servers import launch

SOAK_S, INTERVAL_S = 600.0, 60.0
QUICK_SOAK_S, QUICK_INTERVAL_S = 3.0, 1.0
CAPACITY_S = 10.0
CONNECTIONS = 256  # enough that a minute's slowest moment does not run out of them at half capacity


def steps(config: RunConfig) -> int:
    return 2


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    soak_s, interval_s = (QUICK_SOAK_S, QUICK_INTERVAL_S) if config.quick else (SOAK_S, INTERVAL_S)
    server = launch("example-soak", example_command(), log_dir, env=example_env())
    try:
        server.wait_ready()
        capacity = measure(server, API, 64, "ignore", config.duration_s if config.quick else CAPACITY_S)["ok_rps"]
        progress(1)
        rate = capacity / 2
        rss: list[float | None] = []
        done = threading.Event()

        def sample() -> None:  # the server's RSS at the end of each interval
            while not done.wait(interval_s):
                rss.append(rss_mib(server.proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            answered = subprocess.run(
                [sys.executable, "-m", "benchmarks.openloop", f"{server.url}/{API}", "--rate", f"{rate:.1f}",
                 "--duration", str(soak_s), "--connections", str(CONNECTIONS), "--interval", str(interval_s),
                 "--body", ROWS_BODY.decode()],
                cwd=ROOT, capture_output=True, text=True, check=False, timeout=soak_s + 120,
            )
        finally:
            done.set()
            sampler.join()
        progress(1)
        if answered.returncode != 0:
            raise RuntimeError(f"open-loop client failed ({answered.returncode}): {answered.stderr}")
        result = json.loads(answered.stdout)
        intervals = result["intervals"]
        while len(rss) < len(intervals):  # the last interval ended with the client
            rss.append(rss_mib(server.proc.pid))
    finally:
        server.stop()
    for interval, value in zip(intervals, rss):
        interval["server_rss_mib"] = value
    first, last = intervals[0], intervals[-1]
    return {
        "capacity_rps": capacity, "rate_rps": rate, "duration_s": soak_s, "interval_s": interval_s,
        "sent": result["sent"], "unsent": result["unsent"], "intervals": intervals,
        "rss_drift": _ratio(last.get("server_rss_mib"), first.get("server_rss_mib")),
        "p99_drift": _ratio(last["p99_ms"], first["p99_ms"]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
