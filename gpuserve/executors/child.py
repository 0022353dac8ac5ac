"""Entry point of a process executor: `python -m gpuserve.executors.child FD PARENT_PID`.

The parent starts this with `CUDA_VISIBLE_DEVICES` (and whatever else its
backend's `visibility_env` says) already set, so the framework sees only this
worker's devices, numbered from 0, when it is first imported here.

Messages from the server: `("run", batch, api, items, encoders)`, answered by
its `BatchResult`; `("stream", batch, api, items, encoders)`, answered by a
`("stream", batch, indices, outcomes)` message per step and then its
`BatchResult`; `("cancel", batch, index)` and `("credit", batch, steps)`,
answered by nothing. The loop blocks on the socket: a synchronous batch runs
alone. While an `async def` API's batch runs, the replica's event loop also
reads the socket, so a cancel reaches the coroutine; a stream reads it between
steps, and blocks on it while its readers are behind. A message that arrives
after its batch ended is ignored by the replica.

A worker dies with the server, even in the middle of a call: on Linux the
kernel sends it SIGKILL when the server's thread that started it ends
(`PR_SET_PDEATHSIG`), and a server that was gone before that was set is
noticed at once. Elsewhere a worker notices only when it next reads the
channel (EOF) and exits then.
"""

from __future__ import annotations

import collections
import ctypes
import faulthandler
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from gpuserve.executors import wire
from gpuserve.executors.hosting import build_replica, import_service
from gpuserve.executors.replica import Replica
from gpuserve.executors.streaming import StreamControl
from gpuserve.heap import keep_heap
from gpuserve.outcomes import BatchResult, Failure

_CHUNK = 1 << 20
_TO_REPLICA = ("cancel", "credit")  # messages for the batch that runs, handed to the replica
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the server ends; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            print(f"gpuserve worker: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}",
                  file=sys.stderr)
    if os.getppid() != parent:  # the server died before the request took effect
        os._exit(1)


class _Inbox:
    """Frames from the server, read blocking, or without blocking while an async batch runs."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self._reader = wire.FrameReader()
        self._ready: collections.deque[Any] = collections.deque()

    def next(self) -> Any:
        while not self._ready:
            data = self.conn.recv(_CHUNK)
            if not data:
                raise EOFError("the server closed the channel")
            self._ready.extend(self._reader.feed(data))
        return self._ready.popleft()

    def drain(self, replica: Replica) -> None:
        """Read what has arrived without blocking and hand cancels and credit to the replica (its loop calls this)."""
        try:
            while data := self.conn.recv(_CHUNK, socket.MSG_DONTWAIT):
                self._ready.extend(self._reader.feed(data))
        except BlockingIOError:
            pass
        while self._ready and self._ready[0][0] in _TO_REPLICA:
            _apply(self._ready.popleft(), replica)


def _apply(message: Any, replica: Replica) -> None:
    """A cancel or credit message, handed to the replica (which ignores it if its batch has ended)."""
    kind, batch, value = message
    if kind == "cancel":
        replica.cancel(batch, value)
    else:
        replica.credit(batch, value)


class _InboxControl(StreamControl):
    """A stream's control in a worker process: what the server says is read from the socket when asked."""

    def __init__(self, count: int, inbox: _Inbox, replica: Replica) -> None:
        super().__init__(count)
        self._inbox = inbox
        self._replica = replica

    def poll(self) -> None:
        self._inbox.drain(self._replica)

    def wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            _apply(self._inbox.next(), self._replica)


def _build(conn: socket.socket) -> Replica:
    build = wire.recv(conn)
    spec = import_service(build["service"], build["sys_path"])
    return build_replica(spec, build["backend"], build["placement"])


def serve(fd: int) -> None:
    conn = socket.socket(fileno=fd)  # blocking: this process has nothing else to do
    try:
        replica = _build(conn)
    except Exception as exc:
        wire.send(conn, ("error", Failure.of(exc)))
        return
    inbox = _Inbox(conn)
    if replica.loop is not None:  # async APIs: their loop listens for cancels while they run
        replica.loop.add_reader(conn.fileno(), inbox.drain, replica)
    wire.send(conn, ("ready", os.getpid()))
    try:
        while True:
            message = inbox.next()
            if message[0] == "run":
                _, batch, api_name, items, encoders = message
                # Results travel encoded by their protocols' encoders (in `run`), so they always pickle.
                wire.send(conn, _guarded(replica.run, api_name, items, encoders, batch))
            elif message[0] == "stream":
                _, batch, api_name, items, encoders = message
                wire.send(conn, _guarded(replica.stream, api_name, items, encoders, batch, _sender(conn, batch),
                                         _InboxControl(len(items), inbox, replica)))
            # else: a cancel or credit for a batch that already ended
    except EOFError:
        return


def _guarded(call: Callable[..., BatchResult], *args: Any) -> BatchResult:
    """A batch's result; what escaped the replica's own handling fails the batch, not this process (whose
    death would cost a rebuild and blame the batch's inputs), as a thread replica's batch would fail."""
    try:
        return call(*args)
    except Exception as exc:
        return BatchResult([], 0.0, Failure.of(exc))


def _sender(conn: socket.socket, batch: int) -> Callable[[list[int], list[Any]], None]:
    def send(indices: list[int], outcomes: list[Any]) -> None:
        wire.send(conn, ("stream", batch, indices, outcomes))

    return send


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[2]))
    keep_heap()  # its batches' arrays come and go as the server's bodies do
    faulthandler.enable(all_threads=True)  # a crash of the model's native code says where, in the server's log
    serve(int(sys.argv[1]))
