"""What the routes and the lifecycle share: one `ServerState` per application, and the stop budget."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
from aiohttp import web

from gpuserve.batching import Batcher, Reason
from gpuserve.deployment import Deployment
from gpuserve.loopwatch import LoopWatch
from gpuserve.pool import DevicePool

log = logging.getLogger("gpuserve")

TAIL_MAX_S = 2.0  # at most this much of the stop is kept for answering and for ending executors
LINGER_MAX_S = 1.0  # open connections stay at least this long, so a request on its way gets its 503
# After the budget, the process exits even if something in it will not end (`runner.py`).
EXIT_MARGIN_S = 1.0


@attrs.define
class StopBudget:
    """`--drain-timeout` bounds the whole stop, from the moment it begins.

    In order: running and queued work finishes until `drain_until` (what is
    left then is answered 503), open connections stay at least `linger_s` (a
    request that arrives on one is answered 503 with `Connection: close`);
    handlers get `http_s` to write their answers; executors get what is left
    (`left`) to end, and are then killed. The process exits at the latest
    `EXIT_MARGIN_S` after the budget.
    """

    total_s: float
    started: float | None = None  # loop time the stop began

    @property
    def tail_s(self) -> float:
        return min(TAIL_MAX_S, self.total_s / 4)

    @property
    def http_s(self) -> float:
        return self.tail_s / 2

    @property
    def linger_s(self) -> float:
        return min(LINGER_MAX_S, self.total_s / 4)

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
    """What handlers and the lifecycle read: set up once by `create_app`.

    `accepting` (read per request) is True once every replica was built, until
    the server fails or begins to stop; `stopping` from the moment it does.
    """

    deployment: Deployment
    pool: DevicePool
    batcher: Batcher
    stop: StopBudget
    failure: str | None = None  # why the server cannot serve (replicas failed to build, dispatcher died)
    on_failure: Callable[[str], None] | None = None  # e.g. the runner stops the server
    loop_watch: LoopWatch = attrs.Factory(LoopWatch)  # how long the event loop goes without a break
    accepting: bool = attrs.field(init=False)
    stopping: bool = False

    def __attrs_post_init__(self) -> None:
        self.accepting = self.pool.ready

    def built(self) -> None:
        """Every replica was built: requests are taken from now on."""
        if self.failure is None and not self.stopping:
            self.accepting = True

    def fail(self, reason: str) -> None:
        """The server cannot serve: refuse what is queued and what comes, and tell `on_failure` (once)."""
        if self.failure is not None:
            return
        self.failure = reason
        self.accepting = False
        log.error("the server has failed: %s", reason)
        message = f"the server has failed: {reason}"
        self.batcher.stop_accepting(Reason.FAILED, message)
        self.batcher.refuse_queued(Reason.FAILED, message)
        if self.on_failure is not None:
            self.on_failure(reason)

    def begin_stop(self, now: float) -> None:
        """The stop begins (idempotent): no new work, no more rebuilds; the budget runs from `now`."""
        self.stop.begin(now)
        self.stopping = True
        self.accepting = False
        self.pool.stopping = True

    def readiness(self) -> str | None:
        """None when some replica can take work now; else why not, in words."""
        if self.failure is not None:
            return f"failed: {self.failure}"
        if self.stopping:
            return "shutting down"
        if not self.pool.ready:
            return "replicas are still being built"
        if not self.pool.takes_work:
            return self.pool.why_no_work()
        return None

    @property
    def ready(self) -> bool:
        return self.readiness() is None


STATE = web.AppKey("gpuserve_state", ServerState)
