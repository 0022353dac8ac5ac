"""Scenario `threads`: the example on the CPU with the intra-op threads gpuserve gives it, and with torch's own.

gpuserve gives each replica on the CPU the cores left beside the event loop
(`--cpu-threads`, derived by default); torch's own default is a thread per
core, which then spins against the event loop and the load generator for
the same cores. Both servers run the example classifier with nothing in the
environment about threads; 64 clients, the two taking turns round after
round, and the ratio is paired per round.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.apps import ROWS_BODY
from benchmarks.config import RunConfig
from benchmarks.overload import API, example_command, example_env
from benchmarks.serve import Target, measure, summarise
from benchmarks.servers import launch

CLIENTS = 64
ARMS = {"derived": (), "torch_default": ("--cpu-threads", "0")}


def steps(config: RunConfig) -> int:
    return len(ARMS) * (config.rounds + (config.warmup_s > 0))


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    tool = loadgen.choose_tool(config.loadgen)
    servers = {arm: launch(f"example-threads-{arm}", example_command(*flags), log_dir, env=example_env(),
                           threads_env=False) for arm, flags in ARMS.items()}
    targets = {arm: Target("gpuserve", f"example_{arm}", arm, f"/{API}", ROWS_BODY) for arm in ARMS}
    measured: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    try:
        for server in servers.values():
            server.wait_ready()
        if config.warmup_s > 0:
            for arm in ARMS:
                measure(tool, servers[arm], targets[arm], CLIENTS, config.warmup_s)
                progress(1)
        order = list(ARMS)
        for number in range(config.rounds):
            for arm in order if number % 2 == 0 else order[::-1]:
                measured[arm].append(measure(tool, servers[arm], targets[arm], CLIENTS, config.round_s))
                progress(1)
    finally:
        for server in servers.values():
            server.stop()
    # What gpuserve derives (the deployment's rule), and torch's own choice.
    threads = {"derived": max(1, len(os.sched_getaffinity(0)) - 1), "torch_default": None}
    rows = {arm: {**summarise(targets[arm], CLIENTS, measured[arm]), "cpu_threads": threads[arm]} for arm in ARMS}
    paired = [a["rps"] / b["rps"] for a, b in zip(measured["derived"], measured["torch_default"]) if b["rps"]]
    return {"rows": list(rows.values()),
            "rps_ratio": statistics.median(paired) if paired else None}

