"""Scenarios `serve` and `baseline`: requests/s and latency over HTTP, gpuserve beside raw aiohttp.

Every server runs at once, idle until its turn; for each concurrency the
targets take turns, round after round (every other round in reverse order),
so that whatever else the machine is doing falls on gpuserve and on its
baseline alike. Besides requests/s and
latency each point records the server's own CPU time per request (from
/proc), which a busy neighbour disturbs far less than throughput.
"""

from __future__ import annotations

import json
import statistics
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks import loadgen
from benchmarks.apps import BODY, ROWS_BODY
from benchmarks.config import RunConfig
from benchmarks.servers import Server, baseline_command, gpuserve_command, running


@attrs.frozen
class Target:
    side: str  # "gpuserve" or "baseline"
    workload: str  # "echo", "echo_batched", "mlp", "mlp_batched"
    server: str
    path: str
    body: bytes = BODY  # batchable APIs take a list of rows: ROWS_BODY
    headers: tuple[tuple[str, str], ...] = tuple(loadgen.JSON_HEADERS.items())
    api: str | None = None  # the API whose /stats count its batches (default: the path's)


GPUSERVE = (
    Target("gpuserve", "echo", "gpuserve-echo", "/echo"),
    Target("gpuserve", "echo_batched", "gpuserve-echo", "/echo_batched", ROWS_BODY),
    # The same echo with its access log on (every server above logs warnings only): what a line costs.
    Target("gpuserve", "echo_access_log", "gpuserve-echo-logged", "/echo"),
    Target("gpuserve", "mlp", "gpuserve-mlp", "/predict"),
    Target("gpuserve", "mlp_batched", "gpuserve-mlp", "/predict_batched", ROWS_BODY),
    Target("gpuserve", "mlp_batched_process", "gpuserve-mlp-process", "/predict_batched", ROWS_BODY),
)
BASELINE = (
    Target("baseline", "echo", "baseline", "/echo"),
    Target("baseline", "mlp", "baseline", "/predict"),
    Target("baseline", "mlp_batched", "baseline", "/predict_batched", ROWS_BODY),
)
# The baseline workload each gpuserve workload is compared with.
BASELINE_OF = {"echo": "echo", "echo_batched": "echo", "echo_access_log": "echo", "mlp": "mlp",
               "mlp_batched": "mlp_batched", "mlp_batched_process": "mlp_batched"}
COMMANDS = {
    "gpuserve-echo": gpuserve_command("benchmarks.apps:Echo"),
    "gpuserve-echo-logged": gpuserve_command("benchmarks.apps:Echo", "--log-level", "info"),
    "gpuserve-mlp": gpuserve_command("benchmarks.apps:Mlp"),
    # The same service with its replica in a process of its own: the model's
    # Python then never waits on the event loop's interpreter lock, nor it on the model's.
    "gpuserve-mlp-process": gpuserve_command("benchmarks.apps:Mlp", "--isolation", "process"),
    "baseline": baseline_command(),
}


def targets(config: RunConfig) -> list[Target]:
    """The targets in measuring order: each gpuserve workload next to its baseline."""
    ours = list(GPUSERVE) if "serve" in config.scenarios else []
    floor = {t.workload: t for t in BASELINE} if "baseline" in config.scenarios else {}
    ordered: list[Target] = []
    for target in ours:
        ordered.append(target)
        base = floor.pop(BASELINE_OF[target.workload], None)
        if base is not None:
            ordered.append(base)
    return ordered + list(floor.values())


def steps(config: RunConfig) -> int:
    return len(targets(config)) * len(config.concurrency) * (config.rounds + (config.warmup_s > 0))


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, list[dict[str, Any]]]:
    chosen = targets(config)
    tool = loadgen.choose_tool(config.loadgen)
    needed = sorted({t.server for t in chosen})
    with running([(name, COMMANDS[name]) for name in needed], log_dir) as servers:
        for target in chosen:
            check(servers[target.server], target)
        rounds = take_turns(chosen, servers, tool, config, progress)
    results: dict[str, list[dict[str, Any]]] = {"serve": [], "baseline": []}
    for (target, concurrency), measured in rounds.items():
        side = "serve" if target.side == "gpuserve" else "baseline"
        results[side].append(summarise(target, concurrency, measured))
    return results


def take_turns(chosen: Sequence[Target], servers: dict[str, Server], tool: str, config: RunConfig,
               progress: Callable[[int], None]) -> dict[tuple[Target, int], list[dict[str, Any]]]:
    """Each target's points per concurrency: a warm-up, then rounds in which every target takes its turn."""
    rounds: dict[tuple[Target, int], list[dict[str, Any]]] = {}
    for concurrency in config.concurrency:
        if config.warmup_s > 0:
            for target in chosen:
                measure(tool, servers[target.server], target, concurrency, config.warmup_s)
                progress(1)
        for number in range(config.rounds):
            # Every other round in reverse: whoever goes first after a pause,
            # or right after a neighbour's burst, is not always the same.
            for target in chosen if number % 2 == 0 else chosen[::-1]:
                point = measure(tool, servers[target.server], target, concurrency, config.round_s)
                rounds.setdefault((target, concurrency), []).append(point)
                progress(1)
    return rounds


def check(server: Server, target: Target) -> None:
    """One request first: a benchmark of error answers would be worthless."""
    request = urllib.request.Request(server.url + target.path, data=target.body, headers=dict(target.headers))
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


def measure(tool: str, server: Server, target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    batches_before = batch_sizes(server, target)
    cpu_before = server.cpu_seconds()
    load = loadgen.measure(tool, server.url + target.path, target.body, concurrency, seconds, dict(target.headers))
    cpu_after = server.cpu_seconds()
    point = attrs.asdict(load)
    known = cpu_before is not None and cpu_after is not None
    point["cpu_s"] = cpu_after[0] - cpu_before[0] if known else None
    point["loop_cpu_s"] = cpu_after[1] - cpu_before[1] if known else None
    point["batches"] = _difference(batch_sizes(server, target), batches_before)
    return point


def batch_sizes(server: Server, target: Target) -> Counter[int]:
    """gpuserve's own count of batches by size, from `/stats` (empty for the baseline)."""
    if target.side != "gpuserve":
        return Counter()
    with urllib.request.urlopen(server.url + "/stats", timeout=10) as answer:
        stats = json.loads(answer.read())
    sizes = stats.get(target.api or target.path.lstrip("/"), {}).get("batch_sizes", {})
    return Counter({int(size): count for size, count in sizes.items()})


def _difference(after: Counter[int], before: Counter[int]) -> Counter[int]:
    after.subtract(before)
    return +after


def summarise(target: Target, concurrency: int, measured: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds; CPU per request and mean batch over all of them."""
    ok = sum(p["rps"] * p["duration_s"] for p in measured)
    cpu = [p["cpu_s"] for p in measured]
    loop_cpu = [p["loop_cpu_s"] for p in measured]
    batches: Counter[int] = sum((p["batches"] for p in measured), Counter())
    return {
        "workload": target.workload,
        "path": target.path,
        "concurrency": concurrency,
        "tool": measured[0]["tool"],
        "rps": statistics.median(p["rps"] for p in measured),
        "p50_ms": statistics.median(p["p50_ms"] for p in measured),
        "p90_ms": statistics.median(p["p90_ms"] for p in measured),
        "p99_ms": statistics.median(p["p99_ms"] for p in measured),
        "mean_ms": statistics.median(p["mean_ms"] for p in measured),
        "requests": sum(p["requests"] for p in measured),
        "errors": sum(p["errors"] for p in measured),
        "cpu_us_per_request": sum(cpu) / ok * 1e6 if ok and None not in cpu else None,
        "loop_cpu_us_per_request": sum(loop_cpu) / ok * 1e6 if ok and None not in loop_cpu else None,
        "mean_batch": sum(s * n for s, n in batches.items()) / sum(batches.values()) if batches else None,
        "rounds": [
            {k: p[k] for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "errors", "duration_s", "cpu_s", "loop_cpu_s")} for p in measured
        ],
    }
