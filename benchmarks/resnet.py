"""Scenario `resnet`: ResNet-50 served with batching, against the same network offline.

The device's own limit is the network run in a loop in one process, batch
after batch of `RESNET_BATCH` images, each batch's labels brought to the host
as a server must: `python -m benchmarks.resnet`, a child that measures one
round per line it reads. gpuserve serves the same `classify`
(`benchmarks.apps:ResNet50`, `max_batch_size=RESNET_BATCH`) to closed-loop
clients, four batches' worth of them on a GPU (one running, the next ones
queued), two on the CPU. Rounds alternate offline and served on the same
device, so a change of clock or a neighbour's load falls on both; the ratio
reported is the median of the round-by-round ratios. fp16 on GPUs, 224x224
images; on the CPU fp32 and 64x64 (32x32 with `--quick`), and it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuserve.plugin import discover

from benchmarks import ROOT, loadgen
from benchmarks.config import RESNET_BATCH, RunConfig
from benchmarks.serve import Target, check, measure, summarise
from benchmarks.servers import gpuserve_command, running, server_env

TARGET = Target("gpuserve", "resnet50", "gpuserve-resnet", "/classify", body=b'{"image": [7]}')
SERVER = gpuserve_command("benchmarks.apps:ResNet50")


def layout(config: RunConfig) -> dict[str, Any]:
    """Where and at what size this machine runs the scenario."""
    on_gpu = bool(discover(os.environ).enumerated)
    return {
        "device": "cuda:0" if on_gpu else "cpu",
        "image_size": 224 if on_gpu else 32 if config.quick else 64,
        "clients": (4 if on_gpu else 2) * RESNET_BATCH,
    }


def steps(config: RunConfig) -> int:
    return config.rounds + (config.warmup_s > 0)


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    where = layout(config)
    env = {**os.environ, "BENCH_RESNET_IMAGE": str(where["image_size"])}
    tool = loadgen.choose_tool(config.loadgen)
    rounds = []
    with running([(TARGET.server, SERVER)], log_dir, env) as servers, Offline(where, env) as offline:
        server = servers[TARGET.server]
        check(server, TARGET)
        if config.warmup_s > 0:
            offline.measure(config.warmup_s)
            measure(tool, server, TARGET, where["clients"], config.warmup_s)
            progress(1)
        for number in range(config.rounds):
            # Every other round served first: whichever goes second after a pause is not always the same.
            if number % 2:
                served = measure(tool, server, TARGET, where["clients"], config.round_s)
                alone = offline.measure(config.round_s)
            else:
                alone = offline.measure(config.round_s)
                served = measure(tool, server, TARGET, where["clients"], config.round_s)
            rounds.append((alone, served))
            progress(1)
    served_row = summarise(TARGET, where["clients"], [served for _, served in rounds])
    ratios = [s["rps"] / a["items_per_s"] for a, s in rounds if a["items_per_s"]]
    return {
        **where,
        "model": "resnet50",
        "dtype": "float16" if where["device"] != "cpu" else "float32",
        "batch_size": RESNET_BATCH,
        "offline_items_per_s": statistics.median(a["items_per_s"] for a, _ in rounds),
        "served_items_per_s": served_row["rps"],
        "ratio": statistics.median(ratios) if ratios else None,
        "mean_batch": served_row["mean_batch"],
        "p50_ms": served_row["p50_ms"],
        "p99_ms": served_row["p99_ms"],
        "errors": served_row["errors"],
        "rounds": [{"offline_items_per_s": a["items_per_s"], "served_items_per_s": s["rps"]} for a, s in rounds],
    }


class Offline:
    """The offline loop in a child process of its own, one round per request."""

    def __init__(self, where: dict[str, Any], env: dict[str, str]) -> None:
        self._command = [sys.executable, "-m", "benchmarks.resnet", "--device", where["device"]]
        self._env = server_env(env)  # the server's thread settings: the same network on the same threads

    def __enter__(self) -> "Offline":
        self._child = subprocess.Popen(self._command, cwd=ROOT, env=self._env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        return self

    def measure(self, seconds: float) -> dict[str, Any]:
        assert self._child.stdin is not None and self._child.stdout is not None
        self._child.stdin.write(f"{seconds}\n")
        self._child.stdin.flush()
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"the offline ResNet-50 loop exited with {self._child.wait()}")
        return json.loads(line)

    def __exit__(self, *exc: object) -> None:
        assert self._child.stdin is not None
        self._child.stdin.close()
        try:
            self._child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()


# -- the child ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.resnet", description=__doc__)
    p.add_argument("--device", required=True, help="cuda:0 or cpu")
    args = p.parse_args(argv)
    from benchmarks import resnet_model

    model, bank = resnet_model.build(args.device), resnet_model.make_bank(args.device)
    ids = list(range(RESNET_BATCH))
    resnet_model.classify(model, bank, ids)  # the first batch pays for kernel selection and allocation
    for line in sys.stdin:
        seconds = float(line)
        started, batches = time.perf_counter(), 0
        while batches == 0 or time.perf_counter() - started < seconds:
            resnet_model.classify(model, bank, ids)  # ends with the labels on the host: synchronised
            batches += 1
        elapsed = time.perf_counter() - started
        print(json.dumps({"items_per_s": batches * RESNET_BATCH / elapsed, "batches": batches, "seconds": elapsed}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
