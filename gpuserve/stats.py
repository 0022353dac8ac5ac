"""Serving signals, kept in one place for a metrics exporter to read.

Per API: queue depth (requests), requests in flight per device, batch sizes
in rows and in requests (a batchable API's request may carry several rows),
the batch ceiling per device in rows (lowered after out-of-memory errors,
raised again as batches succeed), time in queue, execution time per device,
refusals by reason (the request never ran), outcomes of the requests that did
run, and requests run again alone after their batch failed as a whole or lost
its replica; for a streaming API also its open streams, the values sent and
the streamed batches whose producer waits on a slow reader. Plain counters:
updating them costs a few dictionary operations on the event loop.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import attrs


@attrs.define
class Summary:
    """Count, sum and maximum of an observed quantity (seconds)."""

    count: int = 0
    total: float = 0.0
    max: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value

    def add_many(self, count: int, total: float, largest: float) -> None:
        """`count` values at once, given their sum and the largest of them."""
        self.count += count
        self.total += total
        if largest > self.max:
            self.max = largest

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def snapshot(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "max": self.max}


@attrs.define
class ApiStats:
    queue_depth: int = 0  # live requests waiting (not yet taken into a batch), as of the last read
    queue_limit: int = 0
    in_flight: Counter[str] = attrs.Factory(Counter)  # executor key -> requests running
    batch_sizes: Counter[int] = attrs.Factory(Counter)  # rows per batch -> batches
    batch_requests: Counter[int] = attrs.Factory(Counter)  # requests per batch -> batches
    batch_ceiling: dict[str, int] = attrs.Factory(dict)  # executor key -> cap since an out-of-memory error
    queue_time: Summary = attrs.Factory(Summary)
    exec_time: defaultdict[str, Summary] = attrs.Factory(lambda: defaultdict(Summary))  # per executor key
    # Why requests were answered without running: queue_full, latency, deadline,
    # cancelled (the client left), shutting_down, failed (the server), quarantined.
    refusals: Counter[str] = attrs.Factory(Counter)
    # What became of items that were taken into a batch: ok, error (500),
    # crashed (500: it crashed its replica), call_timeout (504: the watchdog stopped its call),
    # executor_lost (503: lost while the server stops), deadline (504 while running),
    # cancelled (client left while running).
    outcomes: Counter[str] = attrs.Factory(Counter)
    reruns: int = 0  # requests run again alone after their batch failed as a whole or lost its replica
    streaming: bool = False  # a streaming API: the three below are counted
    streams: int = 0  # streams open: admitted and not yet ended, queued or running
    stream_values: int = 0  # values that reached the event loop
    streams_waiting: int = 0  # streamed batches whose producer waits for a slow reader


class Stats:
    def __init__(self, api_names: list[str], streaming: frozenset[str] = frozenset()) -> None:
        self.apis: dict[str, ApiStats] = {name: ApiStats(streaming=name in streaming) for name in api_names}

    def __getitem__(self, api_name: str) -> ApiStats:
        return self.apis[api_name]

    def snapshot(self) -> dict[str, dict[str, object]]:
        """A JSON-ready view (for `/stats` and tests)."""
        return {
            name: {
                "queue_depth": s.queue_depth,
                "queue_limit": s.queue_limit,
                "in_flight": dict(s.in_flight),
                "batch_sizes": {str(k): v for k, v in sorted(s.batch_sizes.items())},
                "batch_requests": {str(k): v for k, v in sorted(s.batch_requests.items())},
                "rows": sum(k * v for k, v in s.batch_sizes.items()),
                "requests": sum(k * v for k, v in s.batch_requests.items()),
                "batch_ceiling": dict(s.batch_ceiling),
                "queue_time_s": s.queue_time.snapshot(),
                "exec_time_s": {k: v.snapshot() for k, v in s.exec_time.items()},
                "refusals": dict(s.refusals),
                "outcomes": dict(s.outcomes),
                "reruns": s.reruns,
                **({"streams": {"open": s.streams, "values": s.stream_values,
                                "waiting_on_readers": s.streams_waiting}} if s.streaming else {}),
            }
            for name, s in self.apis.items()
        }
