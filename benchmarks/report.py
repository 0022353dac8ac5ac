"""Turn a run's figures into ratios, target checks, PNG plots and a summary table."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.config import RESNET_BATCH  # noqa: E402
from benchmarks.serve import BASELINE_OF  # noqa: E402

TARGET_CONCURRENCY = 64
# The batched MLP's targets are read from the configuration gpuserve recommends
# for a model whose batches hold the interpreter lock: its own process. The
# thread-isolated figures stand beside them in the table.
MLP_TARGET = "mlp_batched_process"
OVERLOAD_GOODPUT = 0.8  # goodput at 4x and 20x the queue in clients, against goodput at 64
SOAK_RSS_DRIFT, SOAK_P99_DRIFT = 1.1, 2.0  # last minute against the first
from benchmarks.hotpath import BATCHER_STEP  # noqa: E402
from benchmarks.overload import FLOORS as OVERLOAD_FLOORS  # noqa: E402
from benchmarks.streaming import CONCURRENCY as STREAMS, TARGET_RATIO, TARGET_WORKLOAD  # noqa: E402


# -- ratios and targets ----------------------------------------------------------------
def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each gpuserve point beside the baseline point of the same workload and concurrency."""
    floor = {(r["workload"], r["concurrency"]): r for r in _rows(results, "baseline")}
    out = []
    for row in _rows(results, "serve"):
        base = floor.get((BASELINE_OF[row["workload"]], row["concurrency"]))
        if base is None:
            continue
        out.append({
            "workload": row["workload"],
            "baseline": BASELINE_OF[row["workload"]],
            "concurrency": row["concurrency"],
            "rps": row["rps"],
            "baseline_rps": base["rps"],
            "rps_ratio": paired_ratio(row, base),
            "p50_ms": row["p50_ms"],
            "p99_ms": row["p99_ms"],
            "baseline_p50_ms": base["p50_ms"],
            "baseline_p99_ms": base["p99_ms"],
            "cpu_us_per_request": row["cpu_us_per_request"],
            "baseline_cpu_us_per_request": base["cpu_us_per_request"],
            "loop_cpu_us_per_request": row["loop_cpu_us_per_request"],
            "baseline_loop_cpu_us_per_request": base["loop_cpu_us_per_request"],
            "errors": row["errors"],
            "baseline_errors": base["errors"],
        })
    return out


def targets(results: dict[str, Any], compared: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The front end's speed targets, each with the figure reached and whether it is met."""
    at = {(r["workload"], r["concurrency"]): r for r in compared}
    serve = {(r["workload"], r["concurrency"]): r for r in _rows(results, "serve")}
    checks = []
    for workload in ("echo", "echo_batched"):
        row = at.get((workload, TARGET_CONCURRENCY))
        checks.append(_check(f"{workload} req/s / raw aiohttp echo req/s, {TARGET_CONCURRENCY} clients",
                             row and row["rps_ratio"], ">=", 0.9))
    row = at.get((MLP_TARGET, TARGET_CONCURRENCY))
    checks.append(_check(f"batched MLP, typed (checked input, float32 array batch; isolation=process) req/s / "
                         f"hand-written batcher req/s, {TARGET_CONCURRENCY} clients", row and row["rps_ratio"], ">=", 1.0))
    row = serve.get((MLP_TARGET, TARGET_CONCURRENCY))
    checks.append(_check(f"batched MLP (isolation=process) p99 / p50, {TARGET_CONCURRENCY} clients",
                         row and _tail_ratio(row), "<=", 2.0))
    kinds = results.get("scaling_kinds")
    checks.append(_check(f"Ray actor / worker process req/s, one replica of the batched MLP on one node, "
                         f"{TARGET_CONCURRENCY} clients", kinds.get("rps_ratio") if isinstance(kinds, dict) else None,
                         ">=", 0.7))
    v2 = results.get("v2")
    image = [r for r in (v2.get("ratios") or []) if r["workload"] == "image_v2" and r["concurrency"] == TARGET_CONCURRENCY] \
        if isinstance(v2, dict) else []
    checks.append(_check(f"v2 binary 224x224x3 FP32 image req/s / raw aiohttp handler req/s, {TARGET_CONCURRENCY} clients",
                         image[0]["rps_ratio"] if image else None, ">=", 0.9))
    hot = [r for r in results.get("hotpath") or [] if isinstance(r, dict) and r.get("step") == BATCHER_STEP]
    value = max((r["overhead_us_per_item"] for r in hot if r["clients"] == TARGET_CONCURRENCY), default=None)
    checks.append(_check(f"batcher overhead per item, in-process, {TARGET_CONCURRENCY} clients (us)",
                         value, "<=", 20.0))
    net = results.get("resnet")
    measured = net.get("ratio") if isinstance(net, dict) else None
    checks.append(_check(f"ResNet-50 (fp16 on GPUs) served items/s / offline items/s, batch {RESNET_BATCH}",
                         measured, ">=", 0.9))
    streamed = {r["concurrency"]: r for r in _stream_ratios(results) if r["workload"] == TARGET_WORKLOAD}
    for streams in STREAMS:
        row = streamed.get(streams)
        checks.append(_check(f"streaming 1 KB values/s / raw aiohttp StreamResponse values/s, {streams} stream(s)",
                             row and row["ratio"], ">=", TARGET_RATIO))
    overload = results.get("overload")
    for row in overload.get("ratios", []) if isinstance(overload, dict) else []:
        if row["layout"] in OVERLOAD_FLOORS:
            continue  # the floors are what gpuserve is measured beside, not targets
        where = f"{row['layout']}, {row['multiple']:g}x the queue ({row['clients']} clients) that {row['mode']} Retry-After"
        checks.append(_check(f"overload goodput / goodput at 64 clients, {where}", row["goodput_ratio"], ">=",
                             OVERLOAD_GOODPUT))
        checks.append(_check(f"overload requests reset or unanswered within 30 s, {where}", row["unanswered"], "<=", 0))
    soaked = results.get("soak")
    if isinstance(soaked, dict) and "intervals" in soaked:
        checks.append(_check("soak RSS, last minute / first minute", soaked["rss_drift"], "<=", SOAK_RSS_DRIFT))
        checks.append(_check("soak p99, last minute / first minute", soaked["p99_drift"], "<=", SOAK_P99_DRIFT))
    return checks + _chaos_targets(_rows(results, "chaos"))


# The chaos scenario's goals: nothing accepted goes unanswered (but where the server itself is
# SIGKILLed), every fault is seen, recovery within the bounds the README states.
CHAOS_EXIT_MARGIN_S = 1.0  # the stop's promise: --drain-timeout plus this
CHAOS_OOM_RECOVERY_S = 10.0


def _chaos_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["fault"]: r for r in rows}
    kept = [r for r in rows if r["fault"] != "server_killed"]
    lost = sum(r["lost"] for r in kept) if kept else None
    seen = sum(r["detected"] for r in rows) / len(rows) if rows else None
    oom = by.get("oom_item", {}).get("recovery_s")
    stops = [r["exit_s"] - r["budget_s"] for r in rows if r.get("budget_s") is not None and r.get("exit_s")]
    worker = by.get("server_killed", {}).get("workers_gone_s")
    return [
        _check("chaos: requests lost, every fault but SIGKILL of the server itself", lost, "<=", 0),
        _check("chaos: share of faults detected", seen, ">=", 1.0),
        _check("chaos: after one out-of-memory request, seconds until 0.9x the throughput before",
               oom, "<=", CHAOS_OOM_RECOVERY_S),
        _check("chaos: stops (SIGTERM with a stuck replica, Ctrl-C to the group), seconds past --drain-timeout",
               max(stops) if stops else None, "<=", CHAOS_EXIT_MARGIN_S),
        _check("chaos: seconds a worker process outlives its SIGKILLed server", worker, "<=", 1.0),
    ]


def _stream_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    streaming = results.get("streaming")
    return streaming.get("ratios") or [] if isinstance(streaming, dict) else []


def _check(name: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    met = None if value is None else (value >= limit if op == ">=" else value <= limit)
    return {"target": name, "value": value, "op": op, "limit": limit, "met": met}


def paired_ratio(row: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Median of round-by-round ratios: each round's two figures were taken seconds apart,
    so a neighbour's burst of load falls on both; falls back to the ratio of medians."""
    pairs = [_ratio(a["rps"], b["rps"]) for a, b in zip(row["rounds"], base["rounds"])]
    if pairs and len(row["rounds"]) == len(base["rounds"]) and None not in pairs:
        return statistics.median(pairs)  # type: ignore[type-var]
    return _ratio(row["rps"], base["rps"])


def _tail_ratio(row: dict[str, Any]) -> float | None:
    """Median of each round's p99 / p50: a round's tail against its own median, taken at
    the same moment. Medians taken over rounds would mix a slow second's p99 with a fast
    one's p50; falls back to them when the rounds are missing."""
    pairs = [_ratio(r["p99_ms"], r["p50_ms"]) for r in row["rounds"]]
    if pairs and None not in pairs:
        return statistics.median(pairs)  # type: ignore[type-var]
    return _ratio(row["p99_ms"], row["p50_ms"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _rows(results: dict[str, Any], key: str) -> list[dict[str, Any]]:
    rows = results.get(key)
    return rows if isinstance(rows, list) else []


# -- files -----------------------------------------------------------------------------
def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def plots(run_dir: Path, results: dict[str, Any], compared: Sequence[dict[str, Any]]) -> list[str]:
    """Every plot the figures allow; returns the file names written."""
    written = []
    device = results.get("device")
    if isinstance(device, dict) and device.get("points"):
        written.append(_device_plot(run_dir / "device_throughput.png", device["points"], "items_per_s", "items/s"))
        written.append(_device_plot(run_dir / "device_memory.png", device["points"], "memory_bytes", "memory (MiB)",
                                    scale=2**-20))
    if _rows(results, "serve") or _rows(results, "baseline"):
        written.append(_serve_plot(run_dir / "serve_latency.png", results, latency=True))
        written.append(_serve_plot(run_dir / "serve_throughput.png", results, latency=False))
    if compared:
        written.append(_ratio_plot(run_dir / "gpuserve_vs_baseline.png", compared))
    if _rows(results, "scaling"):
        written.append(_scaling_plot(run_dir / "scaling.png", _rows(results, "scaling")))
    overload = results.get("overload")
    if isinstance(overload, dict) and overload.get("rows"):
        written.append(_overload_plot(run_dir / "overload.png", overload["rows"]))
    soaked = results.get("soak")
    if isinstance(soaked, dict) and soaked.get("intervals"):
        written.append(_soak_plot(run_dir / "soak.png", soaked))
    return written


def _overload_plot(path: Path, rows: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        modes = ("ignore", "honour") if r["clients"] == 64 else (r["mode"],)  # the full-speed point starts both
        if r["layout"] in OVERLOAD_FLOORS:
            lines[f"{r['layout']} (raw aiohttp, refuses nothing)"][r["clients"]].append(r["ok_rps"])
            continue
        for mode in modes:
            lines[f"{r['layout']}, clients that {mode} Retry-After"][r["clients"]].append(r["ok_rps"])
    for name, points in sorted(lines.items()):
        xs = sorted(points)
        ax.plot(xs, [statistics.median(points[x]) for x in xs], marker="o", label=name)
    ax.set(xlabel="closed-loop clients", ylabel="successful requests/s", title="goodput under overload")
    _log2_ticks(ax, sorted({r["clients"] for r in rows}))
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _soak_plot(path: Path, soaked: dict[str, Any]) -> str:
    intervals = soaked["intervals"]
    minutes = [i["start_s"] / 60 for i in intervals]
    fig, (latency, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    latency.plot(minutes, [i["p50_ms"] for i in intervals], marker="o", label="p50")
    latency.plot(minutes, [i["p99_ms"] for i in intervals], marker="^", ls="--", label="p99")
    latency.set(xlabel="minute", ylabel="latency (ms)", yscale="log",
                title=f"open loop at {soaked['rate_rps']:,.0f} req/s (half capacity)")
    latency.legend(fontsize="small")
    memory.plot(minutes, [i.get("server_rss_mib") for i in intervals], marker="o")
    memory.set(xlabel="minute", ylabel="server RSS (MiB)", title="server memory")
    memory.set_ylim(bottom=0)
    for ax in (latency, memory):
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def _device_plot(path: Path, points: list[dict[str, Any]], key: str, label: str, scale: float = 1.0) -> str:
    models = sorted({p["model"] for p in points})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for p in points:
            if p["model"] == model and p[key] is not None:
                lines[f"{p['backend']} {p['device']} ({p['memory_kind']})" if key == "memory_bytes"
                      else f"{p['backend']} {p['device']}"].append((p["batch_size"], p[key] * scale))
        for name, xy in sorted(lines.items()):
            xs, ys = zip(*sorted(xy))
            ax.plot(xs, ys, marker="o", label=name)
        ax.set(yscale="log", xlabel="batch size", ylabel=label, title=f"{model}: {label} vs batch size")
        _log2_ticks(ax, sorted({p["batch_size"] for p in points}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def _serve_plot(path: Path, results: dict[str, Any], latency: bool) -> str:
    # One panel per gpuserve workload, its baseline beside it (or per baseline workload alone).
    workloads = sorted({r["workload"] for r in _rows(results, "serve")} or {r["workload"] for r in _rows(results, "baseline")})
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.5 * len(workloads), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for side, colour in (("serve", "tab:blue"), ("baseline", "tab:orange")):
            wanted = workload if side == "serve" else BASELINE_OF.get(workload, workload)
            rows = sorted((r for r in _rows(results, side) if r["workload"] == wanted), key=lambda r: r["concurrency"])
            if not rows:
                continue
            xs = [r["concurrency"] for r in rows]
            name = "gpuserve" if side == "serve" else f"raw aiohttp ({wanted})"
            if latency:
                ax.plot(xs, [r["p50_ms"] for r in rows], marker="o", color=colour, label=f"{name} p50")
                ax.plot(xs, [r["p99_ms"] for r in rows], marker="^", ls="--", color=colour, label=f"{name} p99")
            else:
                ax.plot(xs, [r["rps"] for r in rows], marker="o", color=colour, label=name)
        ax.set(xlabel="concurrent clients", title=workload, ylabel="latency (ms)" if latency else "requests/s")
        _log2_ticks(ax, sorted({r["concurrency"] for side in ("serve", "baseline") for r in _rows(results, side)}))
        if latency:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("latency vs concurrency" if latency else "throughput vs concurrency")
    return _save(fig, path)


def _ratio_plot(path: Path, compared: Sequence[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_workload: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in compared:
        if r["rps_ratio"] is not None:
            by_workload[r["workload"]].append((r["concurrency"], r["rps_ratio"]))
    for workload, xy in sorted(by_workload.items()):
        xs, ys = zip(*sorted(xy))
        ax.plot(xs, ys, marker="o", label=f"{workload} / baseline {BASELINE_OF[workload]}")
    ax.axhline(1.0, color="grey", lw=1)
    ax.axhline(0.9, color="grey", lw=1, ls=":")
    ax.set(yscale="log", xlabel="concurrent clients", ylabel="gpuserve req/s ÷ baseline req/s",
           title="gpuserve against raw aiohttp (same run)")
    values = [r["rps_ratio"] for r in compared if r["rps_ratio"]]
    if values:
        low, high = min(values + [0.9]) / 1.5, max(values + [1.0]) * 1.5
        ax.set_yticks([t for t in (0.05, 0.1, 0.2, 0.5, 0.9, 1, 2, 5, 10, 20, 50) if low <= t <= high])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    _log2_ticks(ax, sorted({r["concurrency"] for r in compared}))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _scaling_plot(path: Path, rows: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    rows = sorted(rows, key=lambda r: r["executors"])
    ax.plot([r["executors"] for r in rows], [r["rps"] for r in rows], marker="o")
    ax.set(xlabel=f"executors ({rows[0]['layout']})", ylabel="requests/s",
           title=f"batched MLP, {rows[0]['concurrency']} clients: throughput vs executors")
    ax.set_xticks([r["executors"] for r in rows])
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _log2_ticks(ax: Any, values: Sequence[int]) -> None:
    """A log2 x axis labelled with the values measured (1, 16, 64, 256), not powers of ten."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(values))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# -- the table -----------------------------------------------------------------------------
def summary(document: dict[str, Any]) -> str:
    results = document["results"]
    parts = []
    compared = document.get("ratios") or []
    if compared:
        parts.append("gpuserve vs raw aiohttp, same run: req/s and latency are medians of rounds, ratio the median "
                     "of round-by-round ratios;\nCPU = server CPU us per request, loop = its event-loop thread's share")
        parts.append(_table(
            ["workload", "clients", "req/s", "base req/s", "ratio", "p50 ms", "p99 ms", "base p50", "base p99",
             "CPU us", "base CPU", "loop us", "base loop", "errors"],
            [[r["workload"], r["concurrency"], r["rps"], r["baseline_rps"], r["rps_ratio"], r["p50_ms"], r["p99_ms"],
              r["baseline_p50_ms"], r["baseline_p99_ms"], r["cpu_us_per_request"], r["baseline_cpu_us_per_request"],
              r["loop_cpu_us_per_request"], r["baseline_loop_cpu_us_per_request"], r["errors"] + r["baseline_errors"]]
             for r in compared],
        ))
    elif _rows(results, "serve") or _rows(results, "baseline"):
        rows = [[side, r["workload"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["cpu_us_per_request"],
                 r["errors"]] for side in ("serve", "baseline") for r in _rows(results, side)]
        parts.append(_table(["side", "workload", "clients", "req/s", "p50 ms", "p99 ms", "CPU us/req", "errors"], rows))
    device = results.get("device")
    if isinstance(device, dict) and device.get("points"):
        best: dict[tuple[str, str, str], dict[str, Any]] = {}
        for p in device["points"]:
            key = (p["backend"], p["device"], p["model"])
            if key not in best or p["items_per_s"] > best[key]["items_per_s"]:
                best[key] = p
        parts.append("device: best throughput per backend, device and model")
        parts.append(_table(["backend", "device", "model", "items/s", "at batch", "batch ms"],
                            [[*k, p["items_per_s"], p["batch_size"], p["batch_ms"]] for k, p in sorted(best.items())]))
    if _rows(results, "scaling"):
        parts.append("scaling: batched MLP")
        parts.append(_table(["executors", "layout", "clients", "req/s", "p50 ms", "p99 ms", "mean batch"],
                            [[r["executors"], r["layout"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"],
                              r["mean_batch"]] for r in _rows(results, "scaling")]))
    kinds = results.get("scaling_kinds")
    if isinstance(kinds, dict) and kinds.get("rows"):
        parts.append(f"scaling: batched MLP, one replica as a Ray actor and as a worker process; Ray / process "
                     f"req/s {_cell(kinds['rps_ratio'])}, Ray's extra overhead per batch "
                     f"{_cell(kinds['extra_overhead_us_per_batch'])} us")
        parts.append(_table(["executors", "clients", "req/s", "p50 ms", "p99 ms", "mean batch", "batch turn us",
                             "exec us", "overhead us"],
                            [[r["executors"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["mean_batch"],
                              r["batch_turn_us"], r["exec_us_per_batch"], r["overhead_us_per_batch"]]
                             for r in kinds["rows"]]))
    v2 = results.get("v2")
    if isinstance(v2, dict) and v2.get("ratios"):
        parts.append("v2 protocol, same run: each gpuserve workload against what it is compared with"
                     + ("" if v2.get("triton") else " (no Triton: pass --triton-python for that baseline)"))
        parts.append(_table(["workload", "against", "clients", "req/s", "its req/s", "ratio", "p50 ms", "p99 ms",
                             "its p50", "its p99", "errors"],
                            [[r["workload"], r["against"], r["concurrency"], r["rps"], r["against_rps"], r["rps_ratio"],
                              r["p50_ms"], r["p99_ms"], r["against_p50_ms"], r["against_p99_ms"], r["errors"]]
                             for r in v2["ratios"]]))
    net = results.get("resnet")
    if isinstance(net, dict) and "ratio" in net:
        parts.append(f"resnet: ResNet-50, {net['dtype']}, {net['image_size']}x{net['image_size']} images, batch "
                     f"{net['batch_size']}, {net['clients']} clients, on {net['device']}")
        parts.append(_table(["offline items/s", "served items/s", "ratio", "mean batch", "p50 ms", "p99 ms", "errors"],
                            [[net["offline_items_per_s"], net["served_items_per_s"], net["ratio"], net["mean_batch"],
                              net["p50_ms"], net["p99_ms"], net["errors"]]]))
    if _stream_ratios(results):
        parts.append("streaming 1 KB values, gpuserve vs raw aiohttp StreamResponse, same run: values/s are medians "
                     "of rounds,\nratio the median of round-by-round ratios; CPU = server CPU us per value")
        parts.append(_table(["workload", "streams", "values/s", "base values/s", "ratio", "CPU us", "base CPU",
                             "errors"],
                            [[r["workload"], r["concurrency"], r["values_per_s"], r["baseline_values_per_s"],
                              r["ratio"], r["cpu_us_per_value"], r["baseline_cpu_us_per_value"], r["errors"]]
                             for r in _stream_ratios(results)]))
    if _rows(results, "hotpath"):
        parts.append("hot path, in-process (best of repeats)")
        parts.append(_table(["step", "clients", "us/item", "over floor"],
                            [[r["step"], r["clients"] or "", r["us_per_item"], r.get("overhead_us_per_item", "")]
                             for r in _rows(results, "hotpath")]))
    if _rows(results, "chaos"):
        parts.append(f"chaos: faults under load ({_rows(results, 'chaos')[0]['clients']} clients); times in s "
                     "from the fault (stops: from the signal)")
        parts.append(_table(
            ["fault", "requests", "answered", "lost", "detected", "recovered", "/readyz", "exit", "code"],
            [[r["fault"], r["requests"], " ".join(f"{k}:{v}" for k, v in r["answered"].items()), r["lost"],
              r.get("detected_s"), r.get("recovery_s"), " ".join(f"{k}:{v}" for k, v in r["readyz"].items()),
              r.get("exit_s"), r.get("exit_code")] for r in _rows(results, "chaos")]))
    overload = results.get("overload")
    if isinstance(overload, dict) and overload.get("ratios"):
        parts.append("overload: the example under closed-loop clients; goodput ratio against 64 clients, paired "
                     "per round (median); outcomes summed over rounds; under the same crowds, the floors refuse "
                     "nothing: floor is the hand-written batcher (/ floor: gpuserve over it), floor-echo the raw echo")
        parts.append(_table(
            ["layout", "clients", "x queue", "Retry-After", "ok req/s", "64-client ok req/s", "ratio", "/ floor",
             "ok p99 ms", "slowest ms", "outcomes", "unanswered", "RSS MiB"],
            [[r["layout"], r["clients"], r["multiple"], r["mode"], r["ok_rps"], r["base_ok_rps"], r["goodput_ratio"],
              r.get("floor_ratio"), r["ok_p99_ms"], r["slowest_answer_ms"],
              " ".join(f"{k}:{v}" for k, v in sorted(r["outcomes"].items())), r["unanswered"], r["server_rss_mib"]]
             for r in overload["ratios"]],
        ))
    threads = results.get("threads")
    if isinstance(threads, dict) and threads.get("rows"):
        parts.append(f"threads: the example at 64 clients; derived / torch's default req/s (paired): "
                     f"{_cell(threads['rps_ratio'])}")
        parts.append(_table(["workload", "intra-op threads", "req/s", "p50 ms", "p99 ms", "CPU us/req"],
                            [[r["workload"], r["cpu_threads"] or "torch's own", r["rps"], r["p50_ms"], r["p99_ms"],
                              r["cpu_us_per_request"]] for r in threads["rows"]]))
    soaked = results.get("soak")
    if isinstance(soaked, dict) and soaked.get("intervals"):
        parts.append(f"soak: open loop at {soaked['rate_rps']:,.0f} req/s (half of {soaked['capacity_rps']:,.0f}), "
                     f"{soaked['duration_s']:g} s")
        parts.append(_table(["from s", "answers", "p50 ms", "p99 ms", "slowest ms", "RSS MiB"],
                            [[i["start_s"], " ".join(f"{k}:{v}" for k, v in sorted(i["answers"].items())),
                              i["p50_ms"], i["p99_ms"], i["slowest_ms"], i.get("server_rss_mib")]
                             for i in soaked["intervals"]]))
    checks = document.get("targets") or []
    if checks:
        parts.append("targets")
        parts.append(_table(["target", "reached", "limit", "met"],
                            [[c["target"], c["value"], f"{c['op']} {c['limit']:g}",
                              {True: "yes", False: "NO", None: "not measured"}[c["met"]]] for c in checks]))
    for scenario, value in results.items():
        if isinstance(value, dict) and "error" in value:
            parts.append(f"{scenario}: FAILED: {value['error']}")
    return "\n\n".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()
