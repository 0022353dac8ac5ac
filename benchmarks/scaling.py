"""Scenario `scaling`: batched-MLP throughput against the number of executors.

With several GPUs, one worker per GPU (`--workers N`); with one GPU, several
executors on it (`--instances-per-device N`); on the CPU, N virtual CPU devices
(`--cpu-devices N --workers N`), which shows what the batcher and pool add or
lose when there is more than one executor to feed, not more hardware.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuserve.plugin import discover

from benchmarks import loadgen
from benchmarks.apps import ROWS_BODY
from benchmarks.config import RunConfig
from benchmarks.serve import Target, measure, summarise
from benchmarks.servers import gpuserve_command, running

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
