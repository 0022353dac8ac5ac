"""Messages between the server and a process executor: pickle protocol 5.

Large buffers (NumPy arrays, anything exposing `PickleBuffer`) travel out of
band, as their own frames, so they are never copied into the pickle stream or
turned into JSON. The first frame carries the buffers' sizes, so each one is
received straight into a fresh writable buffer: the arrays rebuilt on the
other side are writable, as they were when sent.
"""

from __future__ import annotations

import pickle
import struct
from multiprocessing.connection import Connection
from typing import Any

_COUNT = struct.Struct("<I")


def send(conn: Connection, message: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    # Every view is taken before the first byte goes out: a buffer that cannot
    # be sent raises here and leaves the stream intact for the next message.
    views = [buffer.raw() for buffer in buffers]
    sizes = struct.pack(f"<I{len(views)}Q", len(views), *(view.nbytes for view in views))
    conn.send_bytes(sizes + header)
    for view in views:
        conn.send_bytes(view)


def recv(conn: Connection) -> Any:
    frame = conn.recv_bytes()
    (count,) = _COUNT.unpack_from(frame)
    sizes = struct.unpack_from(f"<{count}Q", frame, _COUNT.size)
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        conn.recv_bytes_into(buffer)
        buffers.append(buffer)
    return pickle.loads(memoryview(frame)[_COUNT.size + 8 * count:], buffers=buffers)
