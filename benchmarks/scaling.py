"""Scenario `scaling`: batched-MLP throughput against the number of executors, and Ray actors beside processes.

With several GPUs, one worker per GPU (`--workers N`); with one GPU, several
executors on it (`--instances-per-device N`); on the CPU, N virtual CPU devices
(`--cpu-devices N --workers N`), which shows what the batcher and pool add or
lose when there is more than one executor to feed, not more hardware.

`compare_kinds`: the same service with one replica as a Ray actor (a local
Ray the server starts, on this machine only) and as a worker process, side by
side, round by round. Besides requests/s it derives each kind's overhead per
batch from gpuserve's own counts: at 64 clients the one replica is never idle,
so a batch's turn lasts (measured time / batches) of which the replica's
method took (execution time / batches); the rest is the trip to the replica
and back.
"""

from __future__ import annotations

import json
import os
import statistics
import urllib.request
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from gpuserve.plugin import EXECUTORS_GROUP, discover

from benchmarks import loadgen
from benchmarks.apps import ROWS_BODY
from benchmarks.config import RunConfig
from benchmarks.serve import Target, measure, summarise
from benchmarks.servers import Server, gpuserve_command, launch, running

CONCURRENCY = 64
TARGET = Target("gpuserve", "mlp_batched", "gpuserve-mlp", "/predict_batched", ROWS_BODY)


def layouts(config: RunConfig) -> list[tuple[int, str, list[str]]]:
    """(executors, how, extra flags) for this machine."""
    gpus = len(discover(os.environ).enumerated)
    counts = (1, 2) if config.quick else (1, 2, 4)
    if gpus > 1:
        return [(n, "gpus", ["--workers", str(n)]) for n in sorted({n for n in counts if n < gpus} | {gpus})]
    if gpus == 1:
        return [(n, "instances_per_gpu", ["--instances-per-device", str(n)]) for n in counts]
    return [(n, "cpu_devices", ["--cpu-devices", str(n), "--workers", str(n)]) for n in counts]


def steps(config: RunConfig) -> int:
    return len(layouts(config)) * (config.rounds + (config.warmup_s > 0))


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> list[dict[str, Any]]:
    tool = loadgen.choose_tool(config.loadgen)
    chosen = layouts(config)
    commands = [(f"gpuserve-mlp-x{n}", gpuserve_command("benchmarks.apps:Mlp", *flags)) for n, _, flags in chosen]
    rows = []
    with running(commands, log_dir) as servers:  # all at once: their start-ups overlap, then they idle in turn
        for executors, how, flags in chosen:
            server = servers[f"gpuserve-mlp-x{executors}"]
            if config.warmup_s > 0:
                measure(tool, server, TARGET, CONCURRENCY, config.warmup_s)
                progress(1)
            measured = []
            for _ in range(config.rounds):
                measured.append(measure(tool, server, TARGET, CONCURRENCY, config.round_s))
                progress(1)
            row = summarise(TARGET, CONCURRENCY, measured)
            row.update(executors=executors, layout=how, flags=flags)
            rows.append(row)
    return rows


KINDS = ("process", "ray")
# A Ray the server starts binds to this machine's interface address unless Ray clusters are limited
# to this machine; the benchmark keeps it on loopback, like every server it runs.
RAY_LOCAL_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def kinds_steps(config: RunConfig) -> int:
    return len(KINDS) * (config.rounds + (config.warmup_s > 0))


def compare_kinds(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    """One replica as a Ray actor against one as a worker process, side by side: the rows and their ratio."""
    if "ray" not in {ep.name for ep in entry_points(group=EXECUTORS_GROUP)}:
        return {"skipped": "gpuserve-ray is not installed (pip install -r executors/gpuserve-ray/requirements-test.txt)"}
    tool = loadgen.choose_tool(config.loadgen)
    servers = {kind: launch(f"gpuserve-mlp-{kind}", gpuserve_command("benchmarks.apps:Mlp", "--executors", kind),
                            log_dir, env={**os.environ, **RAY_LOCAL_ONLY}) for kind in KINDS}
    try:
        for server in servers.values():
            server.wait_ready()
        if config.warmup_s > 0:
            for kind in KINDS:
                measure(tool, servers[kind], TARGET, CONCURRENCY, config.warmup_s)
                progress(1)
        before = {kind: _executed(servers[kind]) for kind in KINDS}
        measured: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for number in range(config.rounds):
            for kind in KINDS if number % 2 == 0 else KINDS[::-1]:
                measured[kind].append(measure(tool, servers[kind], TARGET, CONCURRENCY, config.round_s))
                progress(1)
        after = {kind: _executed(servers[kind]) for kind in KINDS}
    finally:
        for server in servers.values():
            server.stop()
    rows = {}
    for kind in KINDS:
        row = summarise(TARGET, CONCURRENCY, measured[kind])
        batches, exec_s = after[kind][0] - before[kind][0], after[kind][1] - before[kind][1]
        seconds = sum(p["duration_s"] for p in measured[kind])
        row.update(executors=kind, batches=batches,
                   batch_turn_us=seconds / batches * 1e6 if batches else None,
                   exec_us_per_batch=exec_s / batches * 1e6 if batches else None)
        row["overhead_us_per_batch"] = (row["batch_turn_us"] - row["exec_us_per_batch"]) if batches else None
        rows[kind] = row
    pairs = [r["rps"] / p["rps"] for r, p in zip(measured["ray"], measured["process"]) if p["rps"]]
    return {
        "rows": list(rows.values()),
        "rps_ratio": statistics.median(pairs) if pairs else None,  # Ray / process, median of round-by-round ratios
        "extra_overhead_us_per_batch": (rows["ray"]["overhead_us_per_batch"] - rows["process"]["overhead_us_per_batch"]
                                        if rows["ray"]["batches"] and rows["process"]["batches"] else None),
    }


def _executed(server: Server) -> tuple[int, float]:
    """Batches the one replica ran for the target, and the seconds its method took, from `/stats`."""
    with urllib.request.urlopen(server.url + "/stats", timeout=10) as answer:
        api = json.loads(answer.read())[TARGET.path.lstrip("/")]
    [times] = api["exec_time_s"].values() or [{"count": 0, "mean": 0.0}]
    return times["count"], times["count"] * times["mean"]
