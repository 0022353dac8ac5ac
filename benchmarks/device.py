"""Scenario `device`: model throughput and memory against batch size, per backend and device.

Each viable backend gpuserve's registry knows a benchmark for (`frameworks.py`)
runs in a child process of its own (`python -m benchmarks.device`), so one
framework's threads, allocator or CUDA context never colour another's figures.
The child prints one JSON line per measured point as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from gpuserve.plugin import Device, discover, installed_backend, installed_backends

from benchmarks import ROOT
from benchmarks.config import RunConfig
from benchmarks.frameworks import FRAMEWORKS, MODELS, Framework

WARMUP_ITERATIONS = 3


def plan(config: RunConfig) -> tuple[list[tuple[str, list[str]]], list[dict[str, str]]]:
    """(backend, device labels) to measure, and the backends skipped with why."""
    gpus = discover(os.environ).enumerated  # what one process can use: the child measures them all
    runs: list[tuple[str, list[str]]] = []
    skipped: list[dict[str, str]] = []
    for entry in installed_backends():
        if config.backends is not None and entry.name not in config.backends:
            continue
        if entry.name not in FRAMEWORKS:
            skipped.append({"backend": entry.name, "reason": "no model benchmark for this backend"})
            continue
        viability = entry.viability()
        if not viability.ok:
            skipped.append({"backend": entry.name, "reason": viability.reason})
            continue
        uses_gpus = entry.cls is not None and entry.cls.uses_gpus
        runs.append((entry.name, [d.label for d in gpus] if uses_gpus and gpus else ["cpu:0"]))
    return runs, skipped


def run(config: RunConfig, progress: Callable[[int], None]) -> dict[str, Any]:
    runs, skipped = plan(config)
    points: list[dict[str, Any]] = []
    for backend, devices in runs:
        command = [sys.executable, "-m", "benchmarks.device", "--backend", backend, "--devices", ",".join(devices),
                   "--batch-sizes", ",".join(map(str, config.batch_sizes)), "--seconds", str(point_seconds(config))]
        with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None and child.stderr is not None
            for line in child.stdout:
                if line.startswith("{"):
                    points.append(json.loads(line))
                    progress(1)
            errors = child.stderr.read()
        if child.returncode != 0:
            skipped.append({"backend": backend, "reason": f"benchmark failed ({child.returncode}): {errors.strip()[-800:]}"})
    return {"points": points, "skipped": skipped}


def steps(config: RunConfig) -> int:
    runs, _ = plan(config)
    return sum(len(devices) for _, devices in runs) * len(MODELS) * len(config.batch_sizes)


def point_seconds(config: RunConfig) -> float:
    return max(0.02, config.duration_s / 40)


# -- the child ---------------------------------------------------------------------------
def _device(label: str) -> Device:
    kind, _, index = label.partition(":")
    if kind == "cpu":
        return Device.cpu(int(index or 0))
    for device in discover(os.environ).enumerated:
        if device.label == label:
            return device
    raise SystemExit(f"no device {label} visible here")


def _measure(bench: Framework, kind: str, batch: int, seconds: float) -> dict[str, Any]:
    forward = bench.build(kind)
    x = bench.inputs(kind, batch)
    bench.reset_peak_memory()
    started, done = time.perf_counter(), 0
    while done < WARMUP_ITERATIONS or time.perf_counter() - started < seconds / 4:
        forward(x)
        done += 1
    estimate = bench.seconds_per_batch(forward, x, WARMUP_ITERATIONS)
    iterations = int(min(max(seconds / max(estimate, 1e-7), WARMUP_ITERATIONS), 100_000))
    per_batch = bench.seconds_per_batch(forward, x, iterations)
    memory, memory_kind = bench.memory()
    return {
        "model": kind,
        "batch_size": batch,
        "iterations": iterations,
        "batch_ms": per_batch * 1e3,
        "items_per_s": batch / per_batch,
        "memory_bytes": memory,
        "memory_kind": memory_kind,
        "timing": bench.timing,
    }


def child(backend_name: str, labels: Sequence[str], batch_sizes: Sequence[int], seconds: float) -> None:
    entry = installed_backend(backend_name)
    assert entry.cls is not None
    backend = entry.cls()
    devices = [_device(label) for label in labels]
    backend.limit_visibility([d for d in devices if d.is_gpu])  # before the framework initialises
    for device in devices:
        bench = FRAMEWORKS[backend_name](backend, device)
        with backend.device_context(device):
            for kind in MODELS:
                for batch in batch_sizes:
                    point = _measure(bench, kind, batch, seconds)
                    point.update(backend=backend_name, version=entry.version, device=device.label, device_name=device.name)
                    print(json.dumps(point), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device", description=__doc__)
    p.add_argument("--backend", required=True)
    p.add_argument("--devices", required=True, help="comma-separated labels: cuda:0,cuda:1 or cpu:0")
    p.add_argument("--batch-sizes", required=True)
    p.add_argument("--seconds", type=float, default=0.25, help="timed seconds per point")
    args = p.parse_args(argv)
    child(args.backend, args.devices.split(","), [int(b) for b in args.batch_sizes.split(",")], args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
