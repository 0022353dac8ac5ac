"""One timer for every request's deadline: on time, in any order, and nothing held for long:
a settled request lets go of its arguments and answer at once, whatever is still pending."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref
from typing import Any

import pytest

import gpuserve
from gpuserve.batching import Batcher
from gpuserve.deadlines import RESOLUTION_S, SWEEP_AT_LEAST, Deadlines
from gpuserve.deployment import prepare
from gpuserve.pool import DevicePool
from gpuserve.service import spec_of
from gpuserve.settings import Settings

SLACK_S = 0.05  # how late a busy test machine may run a timer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.future: asyncio.Future[Any] = loop.create_future()
        self.expires = loop.time() + timeout
        self.expired_at: float | None = None


def _deadlines(loop: asyncio.AbstractEventLoop, default: float | None) -> Deadlines:
    def expire(item: Item) -> None:
        item.expired_at = loop.time()
        item.future.set_result("expired")

    return Deadlines(default, expire)


def _track(deadlines: Deadlines, loop: asyncio.AbstractEventLoop, timeout: float | None) -> Item:
    item = Item(loop, deadlines.default_timeout if timeout is None else timeout)
    deadlines.track(item, loop, timeout)
    return item


async def test_default_and_own_timeouts_expire_on_time_whatever_the_order_of_arrival():
    loop = asyncio.get_running_loop()
    deadlines = _deadlines(loop, default=0.3)
    slow_default = _track(deadlines, loop, None)
    own_short = _track(deadlines, loop, 0.05)  # earlier than what the timer was armed for
    own_long = _track(deadlines, loop, 0.5)
    own_middle = _track(deadlines, loop, 0.15)
    answered = _track(deadlines, loop, 0.1)
    answered.future.set_result("done")
    await asyncio.sleep(0.6 + SLACK_S)
    for item, timeout in ((own_short, 0.05), (own_middle, 0.15), (slow_default, 0.3), (own_long, 0.5)):
        assert item.expired_at is not None, f"the {timeout} s deadline never fired"
        late = item.expired_at - item.expires
        assert -RESOLUTION_S <= late <= SLACK_S, f"the {timeout} s deadline fired {late * 1000:.1f} ms off"
    assert answered.expired_at is None and answered.future.result() == "done"
    assert len(deadlines) == 0


async def test_settled_requests_are_not_held_behind_a_live_one():
    loop = asyncio.get_running_loop()
    deadlines = _deadlines(loop, default=60.0)
    stuck = _track(deadlines, loop, None)  # first in the FIFO, live for the whole test
    for _ in range(20 * SWEEP_AT_LEAST):
        item = _track(deadlines, loop, None)
        item.future.set_result(None)
    assert len(deadlines) <= SWEEP_AT_LEAST + 1
    assert not stuck.future.done()
    deadlines.close()


async def test_without_a_default_only_own_timeouts_are_kept():
    loop = asyncio.get_running_loop()
    deadlines = _deadlines(loop, default=None)
    own = _track(deadlines, loop, 0.05)
    await asyncio.sleep(0.05 + SLACK_S)
    assert own.expired_at is not None
    assert len(deadlines) == 0


class Blob:
    """An argument, and an answer, that can be watched for being let go."""


def _answer(result: Any) -> Blob:
    return Blob()


@gpuserve.service(backend="cpu")
class Waits:
    # Unannotated: these take Python objects in-process, which no JSON body could carry.
    @gpuserve.api
    def wait(self, gate):
        gate.wait(30)

    @gpuserve.api
    def take(self, blob):
        return None


async def test_a_settled_request_lets_go_of_its_arguments_and_answer_behind_a_live_one():
    deployment = prepare(spec_of(Waits), Settings(instances_per_device=2), dict(os.environ))
    pool = DevicePool(deployment.executors())
    await pool.start()
    batcher = Batcher(deployment.spec.apis.values(), pool, timeout=60.0)
    batcher.start(on_failure=lambda exc: None)
    gate = threading.Event()
    try:
        stuck = batcher.submit("wait", {"gate": gate}, _answer)  # first in the deadline FIFO, live throughout
        let_go = []
        for _ in range(SWEEP_AT_LEAST // 4):  # fewer than a sweep would forget
            blob = Blob()
            future = batcher.submit("take", {"blob": blob}, _answer)
            answer = await future
            let_go += [weakref.ref(blob), weakref.ref(answer)]
            del blob, future, answer
        # The test's runner may hold the value that last woke the test: let that be an untracked answer.
        await batcher.submit("take", {"blob": None}, _answer)
        gc.collect()
        assert not stuck.done()
        assert all(ref() is None for ref in let_go)
    finally:
        gate.set()
        await stuck
        await batcher.close()
        await pool.stop(5.0)
