"""Scenario `streaming`: values per second of a generator of 1 KB values, gpuserve beside a raw aiohttp stream.

gpuserve serves `benchmarks.apps:Streamer` (its generator runs in the replica,
with thread isolation and again with process isolation); the baseline's
handler writes the same generator's values to a `StreamResponse` on the event
loop, in the same bytes (`data: <json>` events, then `data: [DONE]`). Each
request streams `STREAM_VALUES` values; the load generator
(`benchmarks.streamload`) keeps 1, then 64, streams going and counts the values
that arrive. As in `serve`, the targets take turns round after round, so a
neighbour's burst falls on both, and the ratio is the median of the
round-by-round ratios.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.apps import STREAM_BODY
from benchmarks.config import RunConfig
from benchmarks.servers import Server, baseline_command, gpuserve_command, running

CONCURRENCY = (1, 64)
TARGET_WORKLOAD = "gpuserve"  # the targets read the default isolation, threads
TARGET_RATIO = 0.8
COMMANDS = {
    "gpuserve": gpuserve_command("benchmarks.apps:Streamer"),
    "gpuserve_process": gpuserve_command("benchmarks.apps:Streamer", "--isolation", "process"),
    "baseline": baseline_command(),
}
PATHS = {"gpuserve": "/values", "gpuserve_process": "/values", "baseline": "/values"}


def steps(config: RunConfig) -> int:
    return len(COMMANDS) * len(CONCURRENCY) * (config.rounds + (config.warmup_s > 0))


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    names = list(COMMANDS)
    measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with running([(name, COMMANDS[name]) for name in names], log_dir) as servers:
        for concurrency in CONCURRENCY:
            if config.warmup_s > 0:
                for name in names:
                    _load(servers[name], concurrency, config.warmup_s)
                    progress(1)
            for number in range(config.rounds):
                for name in names if number % 2 == 0 else names[::-1]:
                    measured.setdefault((name, concurrency), []).append(
                        _measure(servers[name], concurrency, config.round_s))
                    progress(1)
    rows = [_summary(name, concurrency, points) for (name, concurrency), points in measured.items()]
    return {"rows": rows, "ratios": ratios(rows)}


def _measure(server: Server, concurrency: int, seconds: float) -> dict[str, Any]:
    before = server.cpu_seconds()
    point = _load(server, concurrency, seconds)
    after = server.cpu_seconds()
    point["cpu_s"] = after[0] - before[0] if before is not None and after is not None else None
    return point


def _load(server: Server, concurrency: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.streamload", server.url + PATHS[server.name], "--concurrency",
         str(concurrency), "--duration", str(seconds), "--body", STREAM_BODY.decode()],
        capture_output=True, text=True, check=False, timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"streaming load generator failed ({done.returncode}): {done.stderr}")
    point = json.loads(done.stdout)
    point["values_per_s"] = point["values"] / point["duration_s"] if point["duration_s"] else 0.0
    return point


def _summary(name: str, concurrency: int, points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    values = sum(p["values"] for p in points)
    cpu = [p["cpu_s"] for p in points]
    return {
        "workload": name,
        "concurrency": concurrency,
        "values_per_s": statistics.median(p["values_per_s"] for p in points),
        "streams": sum(p["streams"] for p in points),
        "errors": sum(p["errors"] for p in points),
        "first_value_p50_ms": statistics.median(p["first_value_p50_ms"] for p in points),
        "first_value_p99_ms": statistics.median(p["first_value_p99_ms"] for p in points),
        "cpu_us_per_value": sum(cpu) / values * 1e6 if values and None not in cpu else None,
        "rounds": [{k: p[k] for k in ("values_per_s", "streams", "errors", "duration_s", "cpu_s")} for p in points],
    }


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gpuserve row beside the baseline's at its concurrency: the median of round-by-round ratios."""
    floor = {r["concurrency"]: r for r in rows if r["workload"] == "baseline"}
    out = []
    for row in rows:
        base = floor.get(row["concurrency"])
        if row["workload"] == "baseline" or base is None:
            continue
        pairs = [a["values_per_s"] / b["values_per_s"] for a, b in zip(row["rounds"], base["rounds"])
                 if b["values_per_s"]]
        out.append({
            "workload": row["workload"],
            "concurrency": row["concurrency"],
            "values_per_s": row["values_per_s"],
            "baseline_values_per_s": base["values_per_s"],
            "ratio": statistics.median(pairs) if pairs else None,
            "cpu_us_per_value": row["cpu_us_per_value"],
            "baseline_cpu_us_per_value": base["cpu_us_per_value"],
            "errors": row["errors"] + base["errors"],
        })
    return out

