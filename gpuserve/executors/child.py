"""Entry point of a process executor: `python -m gpuserve.executors.child FD`.

The parent starts this with `CUDA_VISIBLE_DEVICES` (and whatever else its
backend's `visibility_env` says) already set, so the framework sees only this
worker's devices, numbered from 0, when it is first imported here.
"""

from __future__ import annotations

import os
import socket
import sys

from gpuserve.executors import wire
from gpuserve.executors.hosting import build_replica, import_service
from gpuserve.outcomes import Failure


def serve(fd: int) -> None:
    conn = socket.socket(fileno=fd)  # blocking: this process has nothing else to do
    build = wire.recv(conn)
    try:
        spec = import_service(build["service"], build["sys_path"])
        replica = build_replica(spec, build["backend"], build["placement"])
    except Exception as exc:
        wire.send(conn, ("error", Failure.of(exc)))
        return
    wire.send(conn, ("ready", os.getpid()))
    while True:
        try:
            api_name, items, encoders = wire.recv(conn)
        except EOFError:
            return
        # Results travel encoded by their protocols' encoders (in `run`), so they always pickle.
        wire.send(conn, replica.run(api_name, items, encoders))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
