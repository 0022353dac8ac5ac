"""Messages between the server and a process executor: pickle protocol 5 in length-prefixed frames.

A frame is `u64 length` then, in those `length` bytes: `u32 count`, `count`
u64 buffer sizes, the pickle stream, and the buffers. Large buffers (NumPy
arrays, anything exposing `PickleBuffer`) travel out of band, after the pickle
stream, so they are never copied into it or turned into JSON; the receiver
rebuilds them as views of its own writable frame, so arrays arrive writable,
as they were when sent.

The child uses the blocking `send` / `recv`; the server's event loop feeds
what it reads to a `FrameReader`, so no thread of the server ever waits on a
child.
"""

from __future__ import annotations

import pickle
import socket
import struct
from collections.abc import Iterator
from typing import Any

_LENGTH = struct.Struct("<Q")
_COUNT = struct.Struct("<I")


def pack(message: Any) -> list[bytes | memoryview]:
    """The frame for `message`, as parts to write one after another."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    # Every view is taken before the first byte goes out: a buffer that cannot
    # be sent raises here and leaves the stream intact for the next message.
    views = [buffer.raw() for buffer in buffers]
    sizes = struct.pack(f"<I{len(views)}Q", len(views), *(view.nbytes for view in views))
    length = len(sizes) + len(stream) + sum(view.nbytes for view in views)
    return [_LENGTH.pack(length) + sizes + stream, *views]


def unpack(frame: bytearray) -> Any:
    """The message in one frame's body (the bytes after its length)."""
    (count,) = _COUNT.unpack_from(frame)
    sizes = struct.unpack_from(f"<{count}Q", frame, _COUNT.size)
    view = memoryview(frame)
    end = len(frame) - sum(sizes)
    buffers = []
    offset = end
    for size in sizes:
        buffers.append(view[offset:offset + size])
        offset += size
    return pickle.loads(view[_COUNT.size + 8 * count:end], buffers=buffers)


def send(sock: socket.socket, message: Any) -> None:
    for part in pack(message):
        sock.sendall(part)


def recv(sock: socket.socket) -> Any:
    """The next message; EOFError when the peer has closed the channel."""
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    return unpack(_recv_exactly(sock, length))


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("the channel was closed")
        got += n
    return data


class FrameReader:
    """Splits a byte stream, fed in pieces as they arrive, into messages."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> Iterator[Any]:
        """The messages completed by `data`, in order."""
        buffer = self._data
        buffer += data
        while len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            end = _LENGTH.size + length
            if len(buffer) < end:
                return
            frame = buffer[_LENGTH.size:end]
            del buffer[:end]
            yield unpack(frame)
