"""A replica in its own spawned process that sees only its own devices.

The child's environment is the server's, narrowed by the backend's
`visibility_env` for the worker's devices, so the framework in the child
numbers them from 0: `cuda:0` there is this worker's first GPU.

The event loop itself talks to the child over a socket pair: no thread of the
server waits on it, so the server's only Python thread under load is the
loop, and the model runs beside it under its own interpreter lock.

The child lives in a session of its own, so Ctrl-C or a signal to the
server's process group does not reach it: the server drains and then ends its
children itself. It dies with the server all the same: on Linux the kernel
kills it when the thread that started it ends (`child.py` asks for that), so
it is started from the event loop's thread, which lives as long as the server.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from gpuserve.backend import Backend
from gpuserve.errors import GpuserveError
from gpuserve.executors import wire
from gpuserve.executors.base import STOP_GRACE_S, Executor, ExecutorDied, ExecutorStuck, Placement, StreamSink
from gpuserve.outcomes import BatchResult, Encoder
from gpuserve.service import ServiceSpec


class ReplicaStartError(GpuserveError):
    """The worker process could not build its replica; `traceback` is the child's, as text,
    `cause` the child's error in one line (as `Type: message`)."""

    def __init__(self, message: str, traceback: str = "", cause: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback
        self.cause = cause or message


def child_environment(base: Mapping[str, str], backend: Backend, placement: Placement) -> dict[str, str]:
    """The server's environment narrowed to the worker's devices; never widened.

    The planned devices all come from the inventory, which already honours the
    inherited `CUDA_VISIBLE_DEVICES`, so the UUID list is always a subset.
    """
    env = dict(base)
    env.update(backend.visibility_env(placement.devices))
    return env


class ChannelClosed(Exception):
    """The child's end of the channel is gone (it exited, or was killed)."""


class _Channel(asyncio.Protocol):
    """Requests to the child and its replies, in order: one reply per request.

    While a stream runs, the child also sends its steps, `("stream", batch,
    indices, outcomes)`, ahead of the stream's reply: they go to `streaming`.
    `on_idle_loss` is called when the channel closes with no request waiting:
    the child died between batches.
    """

    def __init__(self, on_idle_loss: Callable[[], None]) -> None:
        self._on_idle_loss = on_idle_loss
        self._reader = wire.FrameReader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.streaming: tuple[int, StreamSink] | None = None  # the running stream's batch and sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def request(self, message: Any) -> asyncio.Future[Any]:
        self.notify(message)
        reply = asyncio.get_running_loop().create_future()
        self._waiting.append(reply)
        return reply

    def notify(self, message: Any) -> None:
        """Send a message that gets no reply."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ChannelClosed()
        transport.writelines(wire.pack(message))

    def data_received(self, data: bytes) -> None:
        for message in self._reader.feed(data):
            if type(message) is tuple and message[0] == "stream":
                streaming = self.streaming
                if streaming is not None and streaming[0] == message[1]:  # else: a stream given up on
                    streaming[1].feed(message[2], message[3])
                continue
            reply = self._waiting.popleft()
            if not reply.done():  # a request given up on (shutdown) still gets its reply: drop it
                reply.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._waiting:
            self._on_idle_loss()
        while self._waiting:
            reply = self._waiting.popleft()
            if not reply.done():
                reply.set_exception(ChannelClosed())

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _ChildLink:
    """A running stream's `StreamLink` to the child: credit and leaving as messages that get no reply."""

    def __init__(self, channel: _Channel, batch: int) -> None:
        self._channel = channel
        self._batch = batch

    def credit(self, steps: int) -> None:
        self._tell(("credit", self._batch, steps))

    def leave(self, index: int) -> None:
        self._tell(("cancel", self._batch, index))

    def _tell(self, message: tuple[Any, ...]) -> None:
        if self._channel.open:  # else the child is gone, and the stream's request says so
            self._channel.notify(message)


class ProcessExecutor(Executor):
    def __init__(
        self,
        spec: ServiceSpec,
        backend: Backend,
        placement: Placement,
        *,
        service_ref: str,
        base_env: Mapping[str, str],
    ) -> None:
        self.placement = placement
        self.service_ref = service_ref
        self.backend = backend
        self._env = child_environment(base_env, backend, placement)
        # Devices renumbered as the child sees them: 0..k-1.
        self._child_placement = attrs.evolve(
            placement, devices=tuple(d.renumbered(i) for i, d in enumerate(placement.devices))
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: _Channel | None = None
        self.pid: int | None = None
        self._batch = 0
        self._running: asyncio.Future[Any] | None = None  # the reply to the batch now running
        self._abandoned = False  # the batch now running was given up on: its child is being killed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._abandoned = False
        # A private socket pair: no address to find, nothing to authenticate,
        # and EOF on our end the moment the child dies.
        ours, theirs = socket.socketpair()
        try:
            with theirs:
                # On this thread (Python spawns with vfork: well under a
                # millisecond), because the child dies when its starting thread does.
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "gpuserve.executors.child", str(theirs.fileno()), str(os.getpid())],
                    env=self._env,
                    pass_fds=[theirs.fileno()],
                    start_new_session=True,  # signals to the server's process group are the server's to handle
                )
            _, self._channel = await loop.create_unix_connection(lambda: _Channel(self._lost_idle), sock=ours)
        except BaseException:
            ours.close()
            await self._end()
            raise
        build = {
            "service": self.service_ref,
            "sys_path": [p for p in sys.path if p],
            "backend": self.backend.name,
            "placement": self._child_placement,
        }
        try:
            reply = await self._channel.request(build)
        except ChannelClosed:
            code = await self._end(grace_s=STOP_GRACE_S)
            raise ReplicaStartError(f"worker process for {self.key} exited with code {code} while starting") from None
        except BaseException:  # cancelled while the child builds: leave nothing behind
            await self._end()
            raise
        if reply[0] == "error":
            await self._end()
            failure = reply[1]
            cause = f"{failure.type}: {failure.message}"
            raise ReplicaStartError(f"replica {self.key} failed to build: {cause}", failure.traceback, cause)
        _, self.pid = reply

    def _lost_idle(self) -> None:
        if self.on_lost is not None:
            self.on_lost()

    @property
    def alive(self) -> bool:
        return self._channel is not None and self._channel.open and self._proc is not None and self._proc.poll() is None

    async def run(
        self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]
    ) -> BatchResult:
        try:
            if self._channel is None:
                raise ChannelClosed()
            self._batch += 1
            reply = self._running = self._channel.request(("run", self._batch, api_name, items, encoders))
            return await reply
        except ChannelClosed:
            raise await self._died() from None

    async def stream(
        self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder], sink: StreamSink
    ) -> BatchResult:
        channel = self._channel
        try:
            if channel is None:
                raise ChannelClosed()
            self._batch += 1
            link = _ChildLink(channel, self._batch)
            sink.attach(link)
            channel.streaming = (self._batch, sink)
            try:
                return await channel.request(("stream", self._batch, api_name, items, encoders))
            except asyncio.CancelledError:  # the server stops: the child closes the generators
                for index in range(len(items)):
                    link.leave(index)
                raise
            finally:
                channel.streaming = None
        except ChannelClosed:
            raise await self._died() from None

    async def _died(self) -> ExecutorDied:
        """The error for a batch whose child is gone: stuck (killed by `abandon`) or died, and how."""
        code = await self._end(grace_s=1.0)  # a child that is dying gets to say why
        if self._abandoned:
            return ExecutorStuck(f"worker process {self.key} (pid {self.pid}) was killed: its call was stuck")
        return ExecutorDied(f"worker process {self.key} (pid {self.pid}) died ({_describe(code)})",
                            self_inflicted=_self_inflicted(code))

    def cancel(self, index: int) -> None:
        if self._channel is not None and self._channel.open:
            self._channel.notify(("cancel", self._batch, index))

    def abandon(self) -> bool:
        """Kill the child: `run` then raises `ExecutorStuck` as its channel closes."""
        running = self._running
        if running is None or running.done():
            return False
        self._abandoned = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        return True

    async def _end(self, grace_s: float = 0.0) -> int | None:
        """Close the channel and make sure the child is gone; its exit code."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        proc = self._proc
        if proc is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, _reap, proc, grace_s)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        """SIGTERM, then SIGKILL after `grace_s`: work was drained before this is called."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        await self._end(grace_s)
        return True


# Signals other processes send to end one (an operator, the kernel's out-of-memory killer):
# the replica did not end itself, so what it ran is not to blame on that alone.
_EXTERNAL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM})


def _self_inflicted(code: int | None) -> bool:
    """Whether an exit code says the child ended itself: it exited, aborted or crashed."""
    return code is not None and (code >= 0 or -code not in _EXTERNAL_SIGNALS)


def _describe(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _reap(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """Wait up to `grace_s` for the child to exit, then kill it; its exit code."""
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
