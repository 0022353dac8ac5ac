"""Messages between the server and a process executor: pickle protocol 5.

Large buffers (NumPy arrays, tensors' storage) travel out of band, as their
own frames, so they are never copied into the pickle stream or turned into JSON.
"""

from __future__ import annotations

import pickle
from multiprocessing.connection import Connection
from typing import Any


def send(conn: Connection, message: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(len(buffers).to_bytes(4, "little") + header)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def recv(conn: Connection) -> Any:
    frame = conn.recv_bytes()
    count = int.from_bytes(frame[:4], "little")
    buffers = [conn.recv_bytes() for _ in range(count)]
    return pickle.loads(memoryview(frame)[4:], buffers=buffers)
