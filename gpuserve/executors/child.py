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
from gpuserve.executors.base import Placement
from gpuserve.executors.replica import Replica
from gpuserve.loader import load_service
from gpuserve.outcomes import Failure
from gpuserve.registry import default_registry


def serve(fd: int) -> None:
    conn = socket.socket(fileno=fd)  # blocking: this process has nothing else to do
    build = wire.recv(conn)
    try:
        for entry in reversed(build["sys_path"]):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        spec = load_service(build["service"])
        backend_cls = default_registry().get(build["backend"]).cls
        if backend_cls is None:
            raise RuntimeError(f"backend {build['backend']!r} failed to load in the worker process")
        backend = backend_cls()
        placement: Placement = build["placement"]
        backend.limit_visibility(placement.devices)
        replica = Replica(spec, placement.context(backend), placement.process_memory_fraction)
        replica.build()
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
