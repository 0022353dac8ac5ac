"""Connections held after an overload refusal: read again when their wait is over, or sooner, oldest first,
when the queue that refused them has room (in-process, over real socket pairs)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gpuserve.protocols.connections import Census, Connection, ConnectionLimits, WaitingRoom

pytestmark = pytest.mark.anyio
WAIT_S = 30.0  # so long that a connection read again within this test was let in by room, not by time


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Inner(asyncio.Protocol):
    """Stands for aiohttp's handler: what reaches it was read."""

    def __init__(self) -> None:
        self.read = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.read.done():
            self.read.set_result(data)


async def _connection(census: Census) -> tuple[Connection, Inner, socket.socket]:
    ours, theirs = socket.socketpair()
    inner = Inner()
    limits = ConnectionLimits(backlog=1, max_connections=10, header_timeout=60.0)
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_unix_connection(lambda: Connection(inner, census, limits, loop), sock=ours)
    return connection, inner, theirs


async def test_held_connections_are_read_again_oldest_first_when_their_queue_has_room():
    room = {"predict": 0}
    waiting = WaitingRoom(lambda queue: room[queue], asyncio.get_running_loop())
    census = Census(waiting)
    first, second = [await _connection(census) for _ in range(2)]
    try:
        for connection, _, _ in (first, second):
            assert connection.hold(WAIT_S, "predict") == WAIT_S  # what the client is told
            assert waiting.count in (1, 2)
        for _, _, client in (first, second):
            client.sendall(b"the next request")
        done, _ = await asyncio.wait([first[1].read, second[1].read], timeout=0.2)
        assert not done  # no room: both wait
        room["predict"] = 1
        assert await asyncio.wait_for(first[1].read, 10) == b"the next request"
        assert not second[1].read.done() and waiting.count == 1
        room["predict"] = 5
        assert await asyncio.wait_for(second[1].read, 10) == b"the next request"
        assert waiting.count == 0
    finally:
        for connection, _, client in (first, second):
            connection.transport.close()
            client.close()


async def test_a_connection_refused_for_latency_waits_out_its_time_whatever_the_room():
    waiting = WaitingRoom(lambda queue: 100, asyncio.get_running_loop())
    connection, inner, client = await _connection(Census(waiting))
    try:
        connection.hold(WAIT_S, None)
        client.sendall(b"again")
        done, _ = await asyncio.wait([inner.read], timeout=0.2)
        assert not done and waiting.count == 1
    finally:
        connection.transport.close()
        client.close()
    await asyncio.sleep(0)
    assert waiting.count == 0  # a connection that closes leaves the room

