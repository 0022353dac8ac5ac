"""What the routes and the lifecycle share: one `ServerState` per application, and the stop budget."""

from __future__ import annotations

from collections.abc import Callable

import attrs
from aiohttp import web

from gpuserve.batching import Batcher
from gpuserve.deployment import Deployment
from gpuserve.loopwatch import LoopWatch
from gpuserve.pool import DevicePool

TAIL_MAX_S = 2.0  # at most this much of the stop is kept for answering and for ending executors


@attrs.define
class StopBudget:
    """`--drain-timeout` bounds the whole stop, from the moment it begins.

    In order: running and queued work finishes until `drain_until` (what is
    left then is answered 503); handlers get `http_s` to write their answers;
    executors get what is left (`left`) to end, and are then killed.
    """

    total_s: float
    started: float | None = None  # loop time the stop began

    @property
    def tail_s(self) -> float:
        return min(TAIL_MAX_S, self.total_s / 4)

    @property
    def http_s(self) -> float:
        return self.tail_s / 2

    def begin(self, now: float) -> None:
        if self.started is None:
            self.started = now

    def drain_until(self) -> float:
        assert self.started is not None, "the stop has not begun"
        return self.started + self.total_s - self.tail_s

    def left(self, now: float) -> float:
        assert self.started is not None, "the stop has not begun"
        return max(self.started + self.total_s - now, 0.0)


@attrs.define
class ServerState:
    """What handlers and the lifecycle read: set up once by `create_app`."""

    deployment: Deployment
    pool: DevicePool
    batcher: Batcher
    stop: StopBudget
    failure: str | None = None  # why the server cannot serve (replicas failed to build, dispatcher died)
    on_failure: Callable[[str], None] | None = None  # e.g. the runner stops the server
    loop_watch: LoopWatch = attrs.Factory(LoopWatch)  # how long the event loop goes without a break

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        if self.on_failure is not None:
            self.on_failure(reason)

    @property
    def ready(self) -> bool:
        return self.pool.ready and self.failure is None


STATE = web.AppKey("gpuserve_state", ServerState)
