"""One timer for every request's deadline: on time, in any order, and nothing held for long."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gpuserve.deadlines import RESOLUTION_S, SWEEP_AT_LEAST, Deadlines

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
