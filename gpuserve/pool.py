"""The per-device executor pool: free executors, handed out as leases.

The batcher asks the pool for a lease when it has work, and only then: a
batch never waits on a busy device while another is idle. A lease is one
executor for one batch at a time:

- `run(api, items, encoders)` runs a batch on it (raises `ExecutorDied` when
  the executor was lost while running it, `ExecutorStuck` when it was given up
  on); `cancel(index)` tells it that a request of that batch is gone, so an
  async call for it stops;
- `stream(api, items, encoders, sink)` runs a batch of a streaming API, each
  step to `sink` as it is yielded (`executors/streaming.py`);
- `release()` gives it back once the batch is answered;
- `abandon()` gives up on the batch it runs (the watchdog found it stuck);
- `replace()` gives it back to be rebuilt instead (its executor was lost or
  given up on): it rejoins the free ones when the rebuild is done, while the
  others serve.

Each lease carries its replica's `ReplicaHealth` (`gpuserve.health`): the
pool keeps its state and counts. A rebuild that fails is tried again after a
back-off (0.1 s, doubling up to 10 s); after `max_build_failures` failures in
a row the replica is `failed` and the pool reports it (`on_failure`): the
server cannot heal itself and says so. While the server stops, nothing is
rebuilt.

The batcher depends on this module only; what an executor is (a thread, a
process, something remote) is the executor's business.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable

from gpuserve.errors import GpuserveError
from gpuserve.executors.base import Executor, ExecutorDied, ExecutorStuck, StreamLink, StreamSink
from gpuserve.health import ReplicaHealth, ReplicaState, not_taking_work, takes_work

__all__ = ["DevicePool", "ExecutorDied", "ExecutorStuck", "Lease", "ReplicaBuildError", "StreamLink", "StreamSink"]

log = logging.getLogger(__name__)
RESTART_DELAY_S = 0.1  # the first wait after a failed restart; it doubles each time
MAX_RESTART_DELAY_S = 10.0
MAX_BUILD_FAILURES = 5  # failed rebuilds in a row before a replica counts as failed


class ReplicaBuildError(GpuserveError):
    """A replica's constructor (the user's `__init__`) or its device failed."""


def _cause(error: BaseException) -> str:
    """A failed build's error in one line: a worker process's own, not how it reached the server."""
    return getattr(error, "cause", None) or f"{type(error).__name__}: {error}"


def _error_text(error: BaseException) -> str:
    """A failed build's traceback: a worker process sends it as text; a thread's is the exception's own."""
    return getattr(error, "traceback", "") or "".join(
        traceback.format_exception(type(error), error, error.__traceback__))


class Lease:
    """One executor, lent for one batch at a time. `key` names it in stats and logs."""

    __slots__ = ("_pool", "executor", "key", "run", "stream", "cancel", "health", "idle")

    def __init__(self, pool: "DevicePool", executor: Executor) -> None:
        self._pool = pool
        self.executor = executor
        self.key = executor.key
        # The executor's own bound method: no extra frame per batch. Its
        # executor object is restarted in place, so the method stays valid.
        self.run = executor.run
        self.stream = executor.stream
        self.cancel = executor.cancel  # request `index` of the running batch is gone
        self.health = ReplicaHealth(executor.key)
        self.idle = False  # in the pool's queue of free leases
        executor.on_lost = self._lost

    def release(self) -> None:
        self.health.state = ReplicaState.READY
        if not self.idle:
            self.idle = True
            self._pool._idle.put_nowait(self)

    def _lost(self) -> None:
        """Its executor died between batches: rebuild it now (it may still sit in the free queue)."""
        if self.health.state is ReplicaState.READY and not self._pool.stopping:  # not ended by the pool
            log.error("executor %s died while idle", self.key)
            self.health.last_error = "died while idle"
            self.replace()

    def replace(self) -> None:
        self._pool._replace(self)

    def abandon(self) -> bool:
        return self._pool._abandon(self)


class DevicePool:
    def __init__(self, executors: list[Executor], *, max_build_failures: int = MAX_BUILD_FAILURES) -> None:
        if not executors:
            raise ValueError("a pool needs at least one executor")
        self._leases = [Lease(self, executor) for executor in executors]
        self._idle: asyncio.Queue[Lease] = asyncio.Queue()
        self._replacing: set[asyncio.Task[None]] = set()  # strong references while they run
        self.max_build_failures = max_build_failures
        self.ready = False  # every replica was built once
        self.stopping = False  # the server stops: nothing is rebuilt any more
        self.on_failure: Callable[[str], None] | None = None  # hears of a replica that cannot be rebuilt

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def keys(self) -> list[str]:
        """Every executor's key, in the order they were given."""
        return [lease.key for lease in self._leases]

    @property
    def executors(self) -> list[Executor]:
        return [lease.executor for lease in self._leases]

    # -- health ------------------------------------------------------------------------
    @property
    def health(self) -> list[ReplicaHealth]:
        return [lease.health for lease in self._leases]

    @property
    def takes_work(self) -> bool:
        """Whether some replica can take work now (ready, or busy with a batch)."""
        return takes_work(self.health)

    @property
    def replacing(self) -> list[str]:
        """The keys of replicas being rebuilt now (lost or stuck): they take no work until they are."""
        return sorted(lease.key for lease in self._leases
                      if lease.health.state in (ReplicaState.RESTARTING, ReplicaState.STUCK))

    def why_no_work(self) -> str:
        return f"no replica can take work ({not_taking_work(self.health)})"

    def health_snapshot(self) -> dict[str, dict[str, object]]:
        """Per replica: state, restarts, stuck calls, failed builds in a row, abandoned threads, last error."""
        return {lease.key: lease.health.snapshot(lease.executor.abandoned_threads) for lease in self._leases}

    # -- building ----------------------------------------------------------------------
    async def start(self) -> None:
        """Build every replica (concurrently); ready once all are built."""
        results = await asyncio.gather(*(lease.executor.start() for lease in self._leases), return_exceptions=True)
        failures = [(lease, r) for lease, r in zip(self._leases, results) if isinstance(r, BaseException)]
        for lease, error in failures:
            log.error("replica %s failed to build:\n%s", lease.key, _error_text(error).rstrip())
            lease.health.state, lease.health.last_error = ReplicaState.FAILED, _cause(error)
        if failures:
            lease, error = failures[0]
            raise ReplicaBuildError(
                f"replica {lease.key} failed to build: {type(error).__name__}: {error}"
                + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            ) from error
        for lease in self._leases:
            lease.release()
        self.ready = True

    # -- lending -----------------------------------------------------------------------
    async def acquire(self) -> Lease:
        """The next free executor's lease; one found dead while idle is replaced, not handed out."""
        while True:
            lease = await self._idle.get()
            lease.idle = False
            if lease.health.state is not ReplicaState.READY:  # lost while queued: it comes back once rebuilt
                continue
            if lease.executor.alive:
                lease.health.state = ReplicaState.BUSY
                return lease
            lease._lost()

    def _abandon(self, lease: Lease) -> bool:
        """Give up on the lease's running batch; False if it had just ended (nothing was given up)."""
        try:
            given_up = lease.executor.abandon()
        except NotImplementedError as exc:  # its call runs on; the replica stays stuck until it ends
            log.error("replica %s is stuck and cannot be replaced: %s", lease.key, exc)
            given_up = None
        if given_up is False:
            return False
        health = lease.health
        health.state, health.stuck = ReplicaState.STUCK, health.stuck + 1
        return bool(given_up)

    def _replace(self, lease: Lease) -> None:
        """Restart a lost executor in the background; its lease is free again when it is built."""
        lease.health.state = ReplicaState.RESTARTING
        if self.stopping:  # the server ends its executors: a rebuild would only be stopped again
            return
        task = asyncio.get_running_loop().create_task(self._restart(lease), name=f"gpuserve-restart-{lease.key}")
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _restart(self, lease: Lease) -> None:
        health = lease.health
        delay = RESTART_DELAY_S
        while True:
            try:
                await lease.executor.restart()
            except Exception as exc:
                health.build_failures += 1
                health.last_error = _cause(exc)
                if health.build_failures >= self.max_build_failures:
                    self._failed(lease, exc)
                    return
                log.error("rebuilding replica %s failed (%d in a row): %s; retrying in %.1f s",
                          lease.key, health.build_failures, health.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
                continue
            health.restarts += 1
            health.build_failures = 0
            log.warning("replica %s rebuilt and serving again", lease.key)
            lease.release()
            return

    def _failed(self, lease: Lease, error: BaseException) -> None:
        health = lease.health
        health.state = ReplicaState.FAILED
        reason = (f"replica {lease.key} failed to build {health.build_failures} times in a row "
                  f"(--max-build-failures): {health.last_error}")
        log.error("%s\n%s", reason, _error_text(error).rstrip())
        if self.on_failure is not None:
            self.on_failure(reason)

    # -- stopping ----------------------------------------------------------------------
    async def stop(self, grace_s: float) -> bool:
        """Stop every executor, giving code still running about `grace_s`; False if some could not be ended."""
        self.stopping = True
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        executors = self.executors
        results = await asyncio.gather(*(e.stop(grace_s) for e in executors), return_exceptions=True)
        for executor, result in zip(executors, results):
            if isinstance(result, BaseException):
                log.error("stopping %s failed: %s: %s", executor.key, type(result).__name__, result)
        return all(result is True for result in results)
