"""The floor under gpuserve: a raw aiohttp server with a minimal hand-written batcher.

`python -m benchmarks.baseline --port P` serves the same workloads as
`benchmarks.apps` with nothing but aiohttp, orjson and the event loop gpuserve
would pick (uvloop when installed):

  POST /echo             {"x": ...} -> x, decoded and encoded on the event loop
  POST /predict          the example MLP, one request per call, in a model thread
  POST /predict_batched  the example MLP behind `MiniBatcher` (32 items or 5 ms)
  POST /values           {"n": N} -> N values of 1 KB as Server-Sent Events, written by a
                         `StreamResponse` as the generator yields them (the bytes gpuserve sends)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy
import orjson
from aiohttp import web

# Internal on purpose: the same loop type (uvloop when installed) as gpuserve's server, or the
# comparison would measure event loops instead of servers.
from gpuserve.eventloop import new_event_loop

from benchmarks.apps import example_model, stream_values


class MiniBatcher:
    """What a person writes in an afternoon: up to 32 items or 5 ms, one batch at a time."""

    MAX_ITEMS = 32
    MAX_WAIT_S = 0.005

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], thread: ThreadPoolExecutor) -> None:
        self.run_batch = run_batch
        self.thread = thread
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.MAX_WAIT_S
            while len(batch) < self.MAX_ITEMS:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            try:
                results = await loop.run_in_executor(self.thread, self.run_batch, [item for item, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def _json(value: Any) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


async def echo(request: web.Request) -> web.Response:
    return _json(orjson.loads(await request.read())["x"])


async def values(request: web.Request) -> web.StreamResponse:
    n = orjson.loads(await request.read())["n"]
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for value in stream_values(n):
        await response.write(b"data: " + orjson.dumps(value) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def create_app() -> web.Application:
    code = example_model()
    model = code.build_model()
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():  # gpuserve would plan the example on the first GPU
            device = "cuda:0"
            model = model.to(device)
    except ImportError:
        pass
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baseline-model")
    batcher = MiniBatcher(lambda rows: code.predict(model, numpy.array(rows, dtype=numpy.float32), device), thread)

    async def predict(request: web.Request) -> web.Response:
        x = orjson.loads(await request.read())["x"]
        rows = numpy.array([x], dtype=numpy.float32)
        results = await asyncio.get_running_loop().run_in_executor(thread, code.predict, model, rows, device)
        return _json(results[0])

    async def predict_batched(request: web.Request) -> web.Response:
        # The same body as gpuserve's batchable API, a list of rows; the benchmark sends one.
        [row] = orjson.loads(await request.read())["x"]
        return _json([await batcher.submit(row)])

    async def image(request: web.Request) -> web.Response:
        # The v2 binary body gpuserve gets: a JSON header, then the tensor's bytes. Read into an array, sent back.
        body = await request.read()
        size = int(request.headers["Inference-Header-Content-Length"])
        [given] = orjson.loads(body[:size])["inputs"]
        array = numpy.frombuffer(body, dtype=numpy.float32, offset=size).reshape(given["shape"])
        return web.Response(body=array.tobytes(), content_type="application/octet-stream")

    async def readyz(_: web.Request) -> web.Response:
        return _json({"status": "ready"})

    async def lifecycle(_: web.Application):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        thread.shutdown(wait=False)

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/echo", echo)
    app.router.add_post("/predict", predict)
    app.router.add_post("/predict_batched", predict_batched)
    app.router.add_post("/image", image)
    app.router.add_post("/values", values)
    app.router.add_get("/readyz", readyz)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3001)
    p.add_argument("--backlog", type=int, default=128, help="the listen backlog (default: aiohttp's, 128)")
    args = p.parse_args(argv)
    loop = new_event_loop()  # the loop gpuserve serves on
    asyncio.set_event_loop(loop)
    web.run_app(create_app(), host=args.host, port=args.port, backlog=args.backlog, loop=loop, access_log=None,
                print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
