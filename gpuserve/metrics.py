"""Prometheus metrics at `GET /metrics`: serving signals, event-loop stalls and the planned GPUs' gauges.

Everything is read at scrape time, from `Stats` and from NVML (or the fake
inventory), so serving a request costs nothing extra. Needs the optional
`prometheus-client` (`pip install gpuserve[metrics]`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from gpuserve.devices import SourceUnavailable, source_for
from gpuserve.health import ReplicaState
from gpuserve.loopwatch import INTERVAL_S, LoopWatch
from gpuserve.stats import Stats

if TYPE_CHECKING:
    from gpuserve.state import ServerState

log = logging.getLogger(__name__)


def _batch_buckets(sizes: Mapping[int, int]) -> list[tuple[str, int]]:
    """Cumulative counts for power-of-two bucket bounds, as a Prometheus histogram wants."""
    bounds, bound = [], 1
    largest = max(sizes, default=1)
    while bound < largest:
        bounds.append(bound)
        bound *= 2
    bounds.append(bound)
    return [(str(b), sum(n for size, n in sizes.items() if size <= b)) for b in bounds] + [
        ("+Inf", sum(sizes.values()))
    ]


class ServingCollector:
    def __init__(self, read_stats: Callable[[], Stats]) -> None:
        self._read_stats = read_stats  # the batcher's: queue depths made exact

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        depth = GaugeMetricFamily("gpuserve_queue_depth", "Requests waiting to be batched", labels=["api"])
        in_flight = GaugeMetricFamily(
            "gpuserve_in_flight_items", "Items running on an executor", labels=["api", "executor"]
        )
        batches = HistogramMetricFamily("gpuserve_batch_size", "Items per batch", labels=["api"])
        queue_time = CounterMetricFamily(
            "gpuserve_queue_time_seconds", "Time items waited before running (sum)", labels=["api"]
        )
        queued = CounterMetricFamily("gpuserve_queued_items", "Items taken from the queue", labels=["api"])
        exec_time = CounterMetricFamily(
            "gpuserve_exec_time_seconds", "Time spent in the model (sum)", labels=["api", "executor"]
        )
        refusals = CounterMetricFamily(
            "gpuserve_refusals", "Requests answered without running, by reason", labels=["api", "reason"]
        )
        outcomes = CounterMetricFamily(
            "gpuserve_outcomes", "Items that ran, by outcome", labels=["api", "outcome"]
        )
        reruns = CounterMetricFamily(
            "gpuserve_reruns", "Requests run again alone after their batch failed as a whole or lost its replica",
            labels=["api"],
        )
        streams = GaugeMetricFamily("gpuserve_streams_open", "Streams open, queued or running", labels=["api"])
        values = CounterMetricFamily("gpuserve_stream_values", "Values streamed to the event loop", labels=["api"])
        waiting = GaugeMetricFamily(
            "gpuserve_streams_waiting_on_readers", "Streamed batches whose producer waits for a slow reader",
            labels=["api"],
        )
        for api, s in self._read_stats().apis.items():
            depth.add_metric([api], s.queue_depth)
            for key, n in s.in_flight.items():
                in_flight.add_metric([api, key], n)
            total = sum(size * n for size, n in s.batch_sizes.items())
            batches.add_metric([api], _batch_buckets(s.batch_sizes), total)
            queue_time.add_metric([api], s.queue_time.total)
            queued.add_metric([api], s.queue_time.count)
            for key, summary in s.exec_time.items():
                exec_time.add_metric([api, key], summary.total)
            for reason, n in s.refusals.items():
                refusals.add_metric([api, reason], n)
            for outcome, n in s.outcomes.items():
                outcomes.add_metric([api, outcome], n)
            reruns.add_metric([api], s.reruns)
            if s.streaming:
                streams.add_metric([api], s.streams)
                values.add_metric([api], s.stream_values)
                waiting.add_metric([api], s.streams_waiting)
        yield from (depth, in_flight, batches, queue_time, queued, exec_time, refusals, outcomes, reruns, streams,
                    values, waiting)


class ReplicaCollector:
    """Each replica's state (one series per state, 1 for the current one), restarts and abandoned threads."""

    def __init__(self, state: "ServerState") -> None:
        self._state = state

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ready = GaugeMetricFamily("gpuserve_ready", "1 while some replica can take work (as /readyz)")
        ready.add_metric([], 1.0 if self._state.ready else 0.0)
        states = GaugeMetricFamily("gpuserve_replica_state", "1 for the replica's current state",
                                   labels=["replica", "state"])
        restarts = CounterMetricFamily("gpuserve_replica_restarts", "Rebuilds after it was lost or stuck",
                                       labels=["replica"])
        stuck = CounterMetricFamily("gpuserve_replica_stuck", "Calls the watchdog gave up on", labels=["replica"])
        abandoned = GaugeMetricFamily("gpuserve_replica_abandoned_threads",
                                      "Threads of replicas given up on, still running user code", labels=["replica"])
        for key, health in self._state.pool.health_snapshot().items():
            for member in ReplicaState:
                states.add_metric([key, member.value], 1.0 if health["state"] == member.value else 0.0)
            restarts.add_metric([key], health["restarts"])  # type: ignore[arg-type]
            stuck.add_metric([key], health["stuck"])  # type: ignore[arg-type]
            abandoned.add_metric([key], health["abandoned_threads"])  # type: ignore[arg-type]
        yield from (ready, states, restarts, stuck, abandoned)


class LoopCollector:
    """How long the event loop went without a break (`gpuserve.loopwatch`)."""

    def __init__(self, watch: LoopWatch) -> None:
        self._watch = watch

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        stalls = HistogramMetricFamily(
            "gpuserve_event_loop_stall_seconds",
            f"Time the event loop ran without a break, checked every {INTERVAL_S * 1000:g} ms (CPU time of the "
            "process over the gap, so waiting for a CPU does not count)",
        )
        stalls.add_metric([], self._watch.buckets(), self._watch.total_s)
        longest = GaugeMetricFamily("gpuserve_event_loop_stall_longest_seconds", "The longest stall so far")
        longest.add_metric([], self._watch.longest_s)
        yield from (stalls, longest)


class GpuCollector:
    """Memory and utilisation of the planned GPUs, by UUID."""

    def __init__(self, uuids: list[str], environ: Mapping[str, str]) -> None:
        self._uuids = set(uuids)
        self._source = source_for(environ)

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["uuid", "name"]
        used = GaugeMetricFamily("gpuserve_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("gpuserve_gpu_memory_total_bytes", "GPU memory in all", labels=labels)
        busy = GaugeMetricFamily("gpuserve_gpu_utilization_percent", "GPU utilisation", labels=labels)
        try:
            gpus = self._source.read()
        except SourceUnavailable as exc:
            log.debug("no GPU gauges: %s", exc.reason)
            gpus = []
        for gpu in (unit for g in gpus for unit in (g, *g.mig)):
            if gpu.uuid not in self._uuids:
                continue
            used.add_metric([gpu.uuid, gpu.name], gpu.memory_used)
            total.add_metric([gpu.uuid, gpu.name], gpu.memory_total)
            if gpu.utilization is not None:
                busy.add_metric([gpu.uuid, gpu.name], gpu.utilization)
        yield from (used, total, busy)


def metrics_handler(state: "ServerState") -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of `GET /metrics`: the Prometheus text format, or a 501 naming the extra if it is missing."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
    except ImportError:
        async def missing(_: web.Request) -> web.Response:
            return web.json_response(
                {"error": "metrics need prometheus-client: pip install gpuserve[metrics]"}, status=501
            )

        return missing

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServingCollector(state.batcher.read_stats))
    registry.register(ReplicaCollector(state))
    registry.register(LoopCollector(state.loop_watch))
    planned = [d.uuid for d in state.deployment.kind.local_gpus()]
    if planned:
        registry.register(GpuCollector(planned, state.deployment.base_env))

    async def metrics(_: web.Request) -> web.Response:
        # NVML reads are quick but blocking: keep them off the event loop.
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
