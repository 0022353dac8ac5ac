"""Large request bodies are decoded in a helper process, off the event loop.

Native bodies of at least `--off-loop-decode-size` bytes, and KServe v2
requests whose JSON header is that large, are parsed there (`decode`,
`parse_v2`); a v2 request whose size is in its binary tensors is not: those
become arrays over the body's own bytes on the loop, at no cost per element.

Parsing JSON and checking it against the declarations are single calls into
C (orjson) and Rust (pydantic) that hold the interpreter lock from start to
end: a 13 MB body takes a few hundred milliseconds, and a thread would not
help, since the event loop cannot run while another thread of its process
holds the lock. So those bodies go to a
process of their own (`python -m gpuserve.protocols.offload FD`), started
when the first one arrives, which imports the service as a worker process
does, decodes with the same `json_codec` decoder, or parses with the same
`v2_request.parse` (so the same row limits apply there: a batch over
`max_batch_size` rows is refused without ever being built on the server), and
sends back the checked arguments. The body
goes out and arrays come back as out-of-band buffers (`executors.wire`):
neither is copied into a pickle stream, and an array is a view of the frame
it arrived in.

What still costs the event loop time in proportion to a body is the part of
the arguments that is plain Python objects (JSON lists without an array
annotation) when it is rebuilt from the reply; the row limit bounds it for
batchable APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from gpuserve.errors import GpuserveError
from gpuserve.executors import wire
from gpuserve.executors.process import ChannelClosed
from gpuserve.executors.process import _Channel as Channel  # the same in-order request/reply channel
from gpuserve.outcomes import Failure
from gpuserve.protocols.json_codec import BadRequest, Decoded, argument_decoder
from gpuserve.protocols.v2_model import NotATensor, V2Model, v2_model
from gpuserve.protocols.v2_request import Parsed, V2BadRequest, parse

log = logging.getLogger("gpuserve")
STOP_GRACE_S = 2.0


class OffloadFailed(GpuserveError):
    """The helper process could not decode a body: it failed to start, or died (`retryable`: a retry may
    work), or the decoder raised what it should not have (not retryable: the same body would fail again)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class DecodeWorker:
    """The helper process that decodes large bodies, started when first needed and restarted if it dies."""

    def __init__(self, service_ref: str, environ: Mapping[str, str]) -> None:
        self.service_ref = service_ref
        # It decodes, nothing more: no GPU, one thread.
        self._env = {**environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        self._starting = asyncio.Lock()  # one start at a time, whoever needs the helper first

    async def decode(self, api_name: str, body: bytes) -> Decoded:
        """The checked arguments in `body` and their rows; `BadRequest` as `json_codec` raises it."""
        reply = await self._ask(("decode", api_name, 0, pickle.PickleBuffer(body)), len(body))
        if reply[0] == "bad":
            raise BadRequest(reply[1], reply[2])
        return reply[1], reply[2]

    async def parse_v2(self, api_name: str, body: bytes, header_size: int) -> Parsed:
        """A KServe v2 request of `api_name`, parsed; `V2BadRequest` as `v2_request.parse` raises it."""
        reply = await self._ask(("v2", api_name, header_size, pickle.PickleBuffer(body)), len(body))
        if reply[0] == "bad":
            raise V2BadRequest(reply[1])
        return reply[1]

    async def _ask(self, request: tuple[Any, ...], size: int) -> tuple[Any, ...]:
        channel = await self._started()
        try:
            reply = await channel.request(request)
        except ChannelClosed:
            code = await self.stop()
            raise OffloadFailed(f"the process decoding large bodies exited (code {code}) while decoding "
                                f"{size} bytes; it is started again for the next one") from None
        if reply[0] == "failed":
            failure: Failure = reply[1]
            raise OffloadFailed(f"decoding failed: {failure.type}: {failure.message}", retryable=False)
        return reply

    async def _started(self) -> Channel:
        async with self._starting:
            if self._channel is None or not self._channel.open:
                await self.stop()
                self._channel = await self._start()
            return self._channel

    async def _start(self) -> Channel:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = await loop.run_in_executor(None, lambda: subprocess.Popen(
                [sys.executable, "-m", "gpuserve.protocols.offload", str(theirs.fileno())],
                env=self._env, pass_fds=[theirs.fileno()],
            ))
        # A helper that dies between bodies is started again by the next one (`_started`): nothing to do then.
        _, channel = await loop.create_unix_connection(lambda: Channel(on_idle_loss=lambda: None), sock=ours)
        try:
            reply = await channel.request({"service": self.service_ref, "sys_path": [p for p in sys.path if p]})
        except ChannelClosed:
            reply = ("error", None)
        if reply[0] != "ready":
            channel.close()
            code = await self.stop()
            why = f"{reply[1].type}: {reply[1].message}" if reply[1] is not None else f"it exited with code {code}"
            raise OffloadFailed(f"the process decoding large bodies could not start: {why}")
        log.info("decoding large bodies in process %d", reply[1])
        return channel

    async def stop(self) -> int | None:
        """End the helper process (if any); its exit code."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
        return await asyncio.get_running_loop().run_in_executor(None, _wait, proc)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# -- the helper process --------------------------------------------------------------------
class _Parsers:
    """The service's decoders, native and v2, as the server builds them."""

    def __init__(self, service_ref: str) -> None:
        from gpuserve.loader import load_service

        spec = load_service(service_ref)
        self.native = {name: argument_decoder(api) for name, api in spec.apis.items()}
        self.v2: dict[str, V2Model] = {}
        for name, api in spec.apis.items():
            with contextlib.suppress(NotATensor):  # the server has no v2 route for it either
                self.v2[name] = v2_model(api)

    def run(self, kind: str, api_name: str, header_size: int, body: memoryview) -> tuple[Any, ...]:
        # The decoded value holds no cycles: collections while millions of new
        # objects pile up would cost more than the decoding itself.
        gc.disable()
        try:
            if kind == "v2":
                return ("ok", parse(self.v2[api_name], body, header_size))
            kwargs, rows = self.native[api_name](body)
            return ("ok", kwargs, rows)
        except BadRequest as exc:
            return ("bad", str(exc), exc.errors)
        except V2BadRequest as exc:
            return ("bad", str(exc))
        except Exception as exc:
            return ("failed", Failure.of(exc))
        finally:
            gc.enable()


def _parsers(conn: socket.socket) -> _Parsers:
    build = wire.recv(conn)
    for entry in reversed(build["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return _Parsers(build["service"])


def serve(fd: int) -> None:
    conn = socket.socket(fileno=fd)
    try:
        parsers = _parsers(conn)
    except Exception as exc:
        wire.send(conn, ("error", Failure.of(exc)))
        return
    wire.send(conn, ("ready", os.getpid()))
    while True:
        try:
            kind, api_name, header_size, body = wire.recv(conn)
        except EOFError:
            return
        reply = parsers.run(kind, api_name, header_size, body)
        del body
        wire.send(conn, reply)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
