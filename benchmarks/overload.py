"""Scenario `overload`: goodput, and what became of every request, when clients outnumber the queue.

The example classifier (`examples/classifier`, with its own settings: a
queue of 256 for its batched API) meets closed-loop clients
(`benchmarks.closedloop`): 64, which it serves at full speed, then 4x and
20x its queue, some retrying at once whatever the answer (ignoring
Retry-After), some waiting out Retry-After after a 503. Every request's
outcome is counted: its status, a reset, or no answer within 30 s. The points
take turns, round after round, so that a neighbour's burst falls on all of
them; goodput ratios are paired within a round. It runs with the example's
threads and again with `--isolation process`, each point's server RSS read
after it.

Beside it, two floors on the server of `benchmarks.baseline`, which refuses
nothing, meet the same crowds (clients that retry at once: it never answers
503, so what a client does with Retry-After cannot matter): the hand-written
batcher of the same MLP, and the raw echo, nothing but aiohttp. Their own
ratios say what a crowd costs an aiohttp server on this machine when nothing is
refused; gpuserve's goodput over the batcher's, at the same crowd, says what
gpuserve's overload handling adds to it.

`--quick` serves the example with a queue of 32 (so 128 and 640 clients) to
check the plumbing in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import ROOT
from benchmarks.apps import ROWS_BODY
from benchmarks.config import RunConfig
from benchmarks.servers import Server, baseline_command, launch

EXAMPLE = ROOT / "examples" / "classifier"
API = "predict"
BASE_CLIENTS = 64
MULTIPLES = (4, 20)
MODES = ("ignore", "honour")  # what clients do with Retry-After
ANSWER_WITHIN_S = 30.0
LAYOUTS = {"threads": (), "processes": ("--isolation", "process")}
# The floors' layout names and routes on the baseline server: the hand-written batcher (the same MLP,
# the same body of one row), which gpuserve's goodput is set beside, and the raw echo (nothing but aiohttp).
FLOOR, ECHO_FLOOR = "floor", "floor-echo"
FLOORS = {FLOOR: "predict_batched", ECHO_FLOOR: "echo"}
FLOOR_BACKLOG = 2048  # gpuserve's default: the floor's accept queue overflowing is not what is measured
QUICK_QUEUE = 32
ROUNDS, POINT_S = 3, 15.0  # a point needs several holds of a crowd (seconds each) to reach its steady state


def example_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "gpuserve", "serve", "app:Classifier", "--log-level", "warning", *flags]


def example_env() -> dict[str, str]:
    """The shell's environment, with the example's folder importable (servers run from the repository root)."""
    path = os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def points(queue: int) -> list[tuple[int, str]]:
    """(clients, Retry-After mode) in measuring order: the full-speed point first."""
    return [(BASE_CLIENTS, "ignore")] + [(m * queue, mode) for m in MULTIPLES for mode in MODES]


def floor_points(queue: int) -> list[tuple[int, str]]:
    return [(clients, mode) for clients, mode in points(queue) if mode == "ignore"]


def steps(config: RunConfig) -> int:
    return _rounds(config) * (len(LAYOUTS) * len(points(QUICK_QUEUE)) + len(FLOORS) * len(floor_points(QUICK_QUEUE)))


def _rounds(config: RunConfig) -> int:
    return 1 if config.quick else ROUNDS


def _seconds(config: RunConfig) -> float:
    return config.duration_s if config.quick else POINT_S


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    extra = ("--queue-size", str(QUICK_QUEUE)) if config.quick else ()
    queue = QUICK_QUEUE
    for layout, flags in LAYOUTS.items():
        server = launch(f"example-{layout}", example_command(*flags, *extra), log_dir, env=example_env())
        try:
            server.wait_ready()
            queue = _queue_limit(server)
            rows += _rounds_of(server, {layout: API}, queue, points(queue), config, progress)
        finally:
            server.stop()
    server = launch("floor", [*baseline_command(), "--backlog", str(FLOOR_BACKLOG)], log_dir)
    try:
        server.wait_ready()
        rows += _rounds_of(server, FLOORS, queue, floor_points(queue), config, progress)
    finally:
        server.stop()
    return {"rows": rows, "ratios": ratios(rows)}


def _rounds_of(server: Server, routes: dict[str, str], queue: int, chosen: list[tuple[int, str]],
               config: RunConfig, progress: Callable[[int], None]) -> list[dict[str, Any]]:
    """Every point of `chosen` on every route (layout name: path) of `server`, round after round."""
    order = [(layout, path, clients, mode) for layout, path in routes.items() for clients, mode in chosen]
    rows = []
    for number in range(_rounds(config)):
        for layout, path, clients, mode in order if number % 2 == 0 else order[::-1]:
            point = measure(server, path, clients, mode, _seconds(config))
            point.update(layout=layout, queue=queue, multiple=clients / queue, round=number)
            rows.append(point)
            progress(1)
    return rows


def _queue_limit(server: Server) -> int:
    with urllib.request.urlopen(server.url + "/stats", timeout=10) as answer:
        return json.loads(answer.read())[API]["queue_limit"]


def measure(server: Server, path: str, clients: int, mode: str, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.closedloop", f"{server.url}/{path}", "--clients", str(clients),
         "--duration", str(seconds), "--body", ROWS_BODY.decode(), "--retry-after", mode,
         "--answer-within", str(ANSWER_WITHIN_S)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=seconds + ANSWER_WITHIN_S + 120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"closed-loop clients failed ({done.returncode}): {done.stderr}")
    point = json.loads(done.stdout)
    outcomes = point["outcomes"]
    point["unanswered"] = outcomes.get("no_answer", 0) + outcomes.get("reset", 0)
    point["server_rss_mib"] = rss_mib(server.proc.pid)
    point["mode"] = mode
    return point


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layout, multiple and mode: goodput over the full-speed point's, paired round by round (median);
    gpuserve's layouts also over the floor's goodput at the same crowd (medians: they ran at other times)."""
    import statistics

    base = {(r["layout"], r["round"]): r["ok_rps"] for r in rows if r["clients"] == BASE_CLIENTS}
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["clients"] != BASE_CLIENTS:
            groups.setdefault((r["layout"], r["multiple"], r["mode"]), []).append(r)
    out = []
    for (layout, multiple, mode), measured in sorted(groups.items()):
        paired = [r["ok_rps"] / base[(layout, r["round"])] for r in measured if base.get((layout, r["round"]))]
        outcomes: dict[str, int] = {}
        for r in measured:
            for name, n in r["outcomes"].items():
                outcomes[name] = outcomes.get(name, 0) + n
        out.append({
            "layout": layout, "multiple": multiple, "mode": mode, "clients": measured[0]["clients"],
            "goodput_ratio": statistics.median(paired) if paired else None,
            "ok_rps": statistics.median(r["ok_rps"] for r in measured),
            "base_ok_rps": statistics.median(v for (lay, _), v in base.items() if lay == layout),
            "ok_p99_ms": statistics.median(r["ok_p99_ms"] for r in measured),
            "slowest_answer_ms": max(r["slowest_answer_ms"] for r in measured),
            "outcomes": outcomes,
            "unanswered": sum(r["unanswered"] for r in measured),
            "server_rss_mib": max((r["server_rss_mib"] or 0.0) for r in measured),
        })
    floor = {r["multiple"]: r["ok_rps"] for r in out if r["layout"] == FLOOR}
    for r in out:
        beside = floor.get(r["multiple"]) if r["layout"] not in FLOORS else None
        r["floor_ok_rps"] = beside
        r["floor_ratio"] = r["ok_rps"] / beside if beside else None
    return out
