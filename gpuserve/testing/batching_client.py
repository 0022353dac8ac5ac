"""The test side of `batching_app`: gates that hold executors, the journal, `/stats`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from gpuserve.testing.served import Reply, Server

_gate_names = itertools.count()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.01)


def stats(server: Server, api: str) -> dict:
    return server.get("stats").body[api]


def wait_until_running(server: Server, api: str, timeout: float = 30) -> None:
    """Wait until `api` has an item running on some executor (per /stats)."""
    wait_until(lambda: any(stats(server, api)["in_flight"].values()), f"{api} runs", timeout)


def journal(directory: Path, api: str, prefix: str = "") -> list[dict]:
    """The calls the model saw for `api` with at least one item starting with `prefix`."""
    path = directory / "journal.jsonl"
    if not path.exists():
        return []
    calls = [json.loads(line) for line in path.read_text().splitlines()]
    return [c for c in calls if c["api"] == api and any(i.startswith(prefix) for i in c["items"])]


def seen(directory: Path, api: str, prefix: str = "") -> set[str]:
    return {i for call in journal(directory, api, prefix) for i in call["items"] if i.startswith(prefix)}


@attrs.define
class Gate:
    """`count` executors held by `hold` calls until `open()`."""

    directory: Path
    name: str
    holds: list[concurrent.futures.Future[Reply]]

    def open(self) -> None:
        (self.directory / self.name).touch()

    def replies(self, timeout: float = 30) -> list[Reply]:
        return [f.result(timeout=timeout) for f in self.holds]


@contextlib.contextmanager
def held(server: Server, directory: Path, count: int = 1) -> Iterator[Gate]:
    """Hold `count` executors busy (the gate opens on exit, whatever happens)."""
    name = f"gate-{next(_gate_names)}-{time.monotonic_ns()}"
    pool = concurrent.futures.ThreadPoolExecutor(count)
    gate = Gate(directory, name, [pool.submit(server.post, "hold", {"gate": name}) for _ in range(count)])
    try:
        wait_until(lambda: sum(stats(server, "hold")["in_flight"].values()) == count,
                   f"{count} executor(s) hold gate {name}")
        yield gate
    finally:
        gate.open()
        pool.shutdown(wait=True)


def one_row(server: Server, api: str, item: object, **kw: object) -> Reply:
    """Post a request of one row (`{"item": [item]}`) to a batchable API; the reply with that row's result."""
    reply = server.post(api, {"item": [item]}, **kw)
    if reply.status == 200:
        assert isinstance(reply.body, list) and len(reply.body) == 1, reply.body
        return attrs.evolve(reply, body=reply.body[0])
    return reply


def post_and_leave(server: Server, api: str, body: dict, queued: Callable[[], bool]) -> None:
    """Send a request, wait until `queued()` says the server holds it, then hang up."""
    url = urlsplit(server.url)
    data = json.dumps(body).encode()
    with socket.create_connection((url.hostname, url.port)) as conn:
        conn.sendall(
            f"POST /{api} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data
        )
        wait_until(queued, f"the request to {api} is queued")


def post_all(server: Server, api: str, items: list[str], **kw: Any) -> list[concurrent.futures.Future[Reply]]:
    """Post one request of one row per item concurrently; the futures of their replies (see `one_row`)."""
    pool = concurrent.futures.ThreadPoolExecutor(len(items))
    futures = [pool.submit(one_row, server, api, i, **kw) for i in items]
    pool.shutdown(wait=False)
    return futures


def queued(server: Server, api: str, depth: int) -> None:
    wait_until(lambda: stats(server, api)["queue_depth"] == depth, f"{depth} {api} request(s) are queued")


def timed_post(server: Server, api: str, item: object, **kw: Any) -> tuple[Reply, float]:
    """`one_row`, and how long its answer took."""
    start = time.monotonic()
    reply = one_row(server, api, item, **kw)
    return reply, time.monotonic() - start


def running(pid: int) -> bool:
    """False once the process is gone or a zombie with no thread left, ready to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z" or len(os.listdir(f"/proc/{pid}/task")) > 1
    except FileNotFoundError:
        return False
