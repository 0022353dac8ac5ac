"""Serving signals, kept in one place for a metrics exporter to read.

Queue depth, in-flight items per device, batch sizes, time in queue,
execution time and refusals by reason, per API. Plain counters: updating
them costs a few dictionary operations on the event loop.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import attrs


@attrs.define
class Summary:
    """Count and sum of an observed quantity (seconds, items)."""

    count: int = 0
    total: float = 0.0

    def add(self, value: float, times: int = 1) -> None:
        self.count += times
        self.total += value * times

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@attrs.define
class ApiStats:
    queue_depth: int = 0
    in_flight: Counter[str] = attrs.Factory(Counter)  # executor key -> items running
    batch_sizes: Counter[int] = attrs.Factory(Counter)
    queue_time: Summary = attrs.Factory(Summary)
    exec_time: dict[str, Summary] = attrs.Factory(lambda: defaultdict(Summary))  # per executor key
    refusals: Counter[str] = attrs.Factory(Counter)  # reason -> count
    completed: Counter[str] = attrs.Factory(Counter)  # "ok" / "error" -> count


class Stats:
    def __init__(self, api_names: list[str]) -> None:
        self.apis: dict[str, ApiStats] = {name: ApiStats() for name in api_names}

    def __getitem__(self, api_name: str) -> ApiStats:
        return self.apis[api_name]

    def snapshot(self) -> dict[str, dict[str, object]]:
        """A JSON-ready view (for `/stats` and tests)."""
        return {
            name: {
                "queue_depth": s.queue_depth,
                "in_flight": dict(s.in_flight),
                "batch_sizes": {str(k): v for k, v in sorted(s.batch_sizes.items())},
                "queue_time_mean_s": s.queue_time.mean,
                "exec_time_mean_s": {k: v.mean for k, v in s.exec_time.items()},
                "refusals": dict(s.refusals),
                "completed": dict(s.completed),
            }
            for name, s in self.apis.items()
        }
