"""Scenario `hotpath`: what each step of a request costs, in-process, without the network.

The request path is HTTP -> json_codec.argument_decoder -> Batcher.submit ->
pool lease -> executor -> json_codec.encode_json (in the replica) -> HTTP. Each
piece is timed alone on the event loop the server uses, driven by 1 and by 64
concurrent clients:

- the codecs on the benchmark body;
- the whole gpuserve route handler (the guard every route goes through,
  decode, submit, batch, encode, response) beside the raw aiohttp
  echo handler, both fed ready-made requests: the difference is what gpuserve
  adds per request on the event loop;
- the route handler refusing a request its full queue cannot take (503);
- the Batcher with the replica run on the loop itself (what is left is the
  batcher's own work and a trivial echo), with the real thread executor, and
  the hand-written baseline batcher with its thread, for comparison;
- floors: a bare asyncio future round trip and a bare `run_in_executor` hop.

Figures are the best of a few repeats: neighbours only ever make things slower.

Unlike the rest of `benchmarks/`, which uses only public names (`gpuserve`,
`gpuserve.plugin`, the CLI), this scenario imports internal modules: it
times internal steps one by one, which no public API exposes on purpose.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from gpuserve.batching import Batcher
from gpuserve.deployment import Deployment, prepare
from gpuserve.eventloop import new_event_loop
from gpuserve.executors import Executor, ThreadExecutor
from gpuserve.outcomes import BatchResult, Encoder
from gpuserve.pool import DevicePool
from gpuserve.protocols.json_codec import argument_decoder, encode_json
from gpuserve.protocols.native import add_native_routes
from gpuserve.service import spec_of
from gpuserve.settings import Settings
from gpuserve.state import ServerState, StopBudget

from benchmarks import baseline
from benchmarks.apps import ROWS_BODY, Echo, Mlp
from benchmarks.config import RunConfig

REPEATS = 3
CLIENTS = (1, 64)
API = "echo_batched"
TIMEOUT_S = 60.0  # the server's default: every item carries a deadline
MLP_RESULT = {"label": 1, "probabilities": [0.17737442255020142, 0.6300849318504333, 0.1925407350063324]}
ON_LOOP = "replica on the loop, no thread hop"
BATCHER_STEP = f"Batcher + {ON_LOOP}"  # the batcher-overhead target is read from this row


class InlineExecutor(ThreadExecutor):
    """The thread executor without its thread: the replica builds and runs on the event loop.

    What is left to time is the batcher's own work and the (trivial) replica
    call, with no hop between threads.
    """

    async def start(self) -> None:
        self._replica = self.new_replica()
        self._replica.build()

    async def run(self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]) -> BatchResult:
        return self._replica.run(api_name, items, encoders)


def _best_us(call: Callable[[], Any], count: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


async def _per_item(call: Callable[[], Awaitable[Any]], clients: int, items: int) -> float:
    """Best microseconds per item, `clients` coroutines each awaiting `call()` in turn."""
    each = max(1, items // clients)
    best = float("inf")

    async def client() -> None:
        for _ in range(each):
            await call()

    for _ in range(REPEATS):
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        best = min(best, time.perf_counter() - start)
    return best / (each * clients) * 1e6


def _rows(step: str, values: dict[int, float]) -> list[dict[str, Any]]:
    return [{"step": step, "clients": clients, "us_per_item": us} for clients, us in values.items()]


class _Protocol:
    """Just enough of a connection for a request body to be read (a Mock would be timed too)."""

    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _Transport:
    """Just enough of a transport for what handlers ask of it (a Mock would record, and be timed, every call)."""

    def get_protocol(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False


class _Arrived(StreamReader):
    """The benchmark body, all arrived, and there again for every call that takes it as gpuserve's
    handlers do (`read_nowait`); aiohttp's `request.read()` keeps what it read the first time."""

    def read_nowait(self, n: int = -1) -> bytes:
        return ROWS_BODY


async def _request(path: str) -> web.Request:
    """A POST of the benchmark body, read once: handlers' reads then return it at once.

    One request object serves every call, so building requests (slow in
    aiohttp's test helpers) is never timed; both handlers read a body that has all arrived.
    """
    payload = _Arrived(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    payload.feed_data(ROWS_BODY)
    payload.feed_eof()
    request = make_mocked_request("POST", path, headers={"Content-Type": "application/json"}, payload=payload,
                                  transport=_Transport())
    await request.read()
    return request


async def _handler_rows(step: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                        items: int, status: int = 200) -> list[dict[str, Any]]:
    request = await _request("/" + API)
    answer = await handler(request)
    if answer.status != status:  # timing an error path by mistake would flatter the handler
        raise RuntimeError(f"{step}: the handler answered {answer.status}, not {status}: {answer.body!r}")
    return _rows(step, {c: await _per_item(lambda: handler(request), c, items) for c in CLIENTS})


async def _served(deployment: Deployment, executors: list[Executor], label: str, items: int) -> list[dict[str, Any]]:
    """The gpuserve route handler, and the batcher under it, over `executors`."""
    pool = DevicePool(executors)
    await pool.start()
    batcher = Batcher(deployment.spec.apis.values(), pool, queue_size=max(CLIENTS) * 4, timeout=TIMEOUT_S)
    app = web.Application()
    add_native_routes(app, ServerState(deployment, pool, batcher, StopBudget(1.0)))
    # Behind the guard every route has, as in the server with its default settings.
    handler = next(r.handler for r in app.router.routes() if r.method == "POST" and r.resource.canonical == "/" + API)
    batcher.start(on_failure=lambda exc: None)
    kwargs = orjson.loads(ROWS_BODY)
    try:
        rows = await _handler_rows(f"gpuserve handler + {label}", handler, items)
        values = {c: await _per_item(lambda: batcher.submit(API, kwargs, encode_json), c, items) for c in CLIENTS}
        rows += _rows(f"Batcher + {label}", values)
    finally:
        await batcher.close()
        await pool.stop(1.0)
    return rows


async def _refused(deployment: Deployment, items: int) -> list[dict[str, Any]]:
    """The route handler answering 503 to a request its full queue cannot take (nothing dispatches)."""
    inline = InlineExecutor(deployment.spec, deployment.backend, deployment.kind.placements()[0])
    pool = DevicePool([inline])
    await pool.start()
    batcher = Batcher(deployment.spec.apis.values(), pool, queue_size=1, timeout=TIMEOUT_S)
    waiting = batcher.submit(API, orjson.loads(ROWS_BODY), encode_json)  # fills the queue: never dispatched
    app = web.Application()
    add_native_routes(app, ServerState(deployment, pool, batcher, StopBudget(1.0)))
    handler = next(r.handler for r in app.router.routes() if r.method == "POST" and r.resource.canonical == "/" + API)
    try:
        return await _handler_rows("gpuserve handler, refused: queue full (503)", handler, items, status=503)
    finally:
        await batcher.close()
        waiting.exception()  # answered as shut down
        await pool.stop(1.0)


async def _floors(items: int) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()

    def resolved_soon() -> asyncio.Future[Any]:
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        return future

    rows = _rows("asyncio future round trip (floor)", {c: await _per_item(resolved_soon, c, items) for c in CLIENTS})
    with ThreadPoolExecutor(max_workers=1) as thread:
        hop = {c: await _per_item(lambda: loop.run_in_executor(thread, int), c, items // 4) for c in CLIENTS}
        rows += _rows("run_in_executor round trip (floor)", hop)
        mini = baseline.MiniBatcher(lambda xs: xs, thread)
        task = asyncio.create_task(mini.run())
        try:
            # Alone, every item waits out the 5 ms timer: a few make the point.
            values = {c: await _per_item(lambda: mini.submit(1), c, 50 if c == 1 else items // 4) for c in CLIENTS}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        rows += _rows("baseline MiniBatcher + its thread", values)
    return rows


async def _async_rows(items: int) -> list[dict[str, Any]]:
    rows = await _floors(items)
    rows += await _handler_rows("raw aiohttp echo handler", baseline.echo, items)
    deployment = prepare(spec_of(Echo), Settings(), dict(os.environ))
    inline = InlineExecutor(deployment.spec, deployment.backend, deployment.kind.placements()[0])
    rows += await _served(deployment, [inline], ON_LOOP, items)
    rows += await _served(deployment, deployment.executors(), "thread executor", items // 4)
    rows += await _refused(deployment, items)
    return rows


def steps(config: RunConfig) -> int:
    return 2


def run(config: RunConfig, progress: Callable[[int], None]) -> list[dict[str, Any]]:
    items = 1_000 if config.quick else 8_000
    decode = argument_decoder(spec_of(Echo).apis[API])
    typed = argument_decoder(spec_of(Mlp).apis["predict_batched"])
    echo_result = orjson.loads(ROWS_BODY)["x"]
    rows = [
        {"step": "json_codec.argument_decoder (benchmark body, no annotations)", "clients": None,
         "us_per_item": _best_us(lambda: decode(ROWS_BODY), items * 4)},
        {"step": "json_codec.argument_decoder (benchmark body, checked to a float32 array)", "clients": None,
         "us_per_item": _best_us(lambda: typed(ROWS_BODY), items * 4)},
        {"step": "json_codec.encode_json (echo result)", "clients": None,
         "us_per_item": _best_us(lambda: encode_json(echo_result), items * 4)},
        {"step": "json_codec.encode_json (MLP result)", "clients": None,
         "us_per_item": _best_us(lambda: encode_json(MLP_RESULT), items * 4)},
    ]
    progress(1)
    loop = new_event_loop()
    try:
        rows += loop.run_until_complete(_async_rows(items))
    finally:
        loop.close()
    progress(1)
    floors = {r["clients"]: r["us_per_item"] for r in rows if r["step"].startswith("asyncio future")}
    raw = {r["clients"]: r["us_per_item"] for r in rows if r["step"] == "raw aiohttp echo handler"}
    for row in rows:
        if row["step"].startswith("Batcher"):
            row["overhead_us_per_item"] = row["us_per_item"] - floors[row["clients"]]
        elif row["step"].startswith("gpuserve handler"):
            row["overhead_us_per_item"] = row["us_per_item"] - raw[row["clients"]]
    return rows
