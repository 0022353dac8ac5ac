"""Streaming services written the way users write them: generators, async generators, a batched one.

Each stream journals what happens to it (started, each value it made, closed,
cancelled) to `$STREAM_APPS_DIR/events.jsonl`, one JSON line each, so that a
test can see inside the replica, in a thread or in a worker process. A gate is
a file the test creates (`gate-<tag>`) to let a waiting generator go on.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import gpuserve

DIR = Path(os.environ.get("STREAM_APPS_DIR", "."))
GATE_WAIT_S = 60  # a gate never opened does not hold a generator (and its executor) for longer


def event(kind: str, tag: str, **extra: object) -> None:
    line = json.dumps({"event": kind, "tag": tag, "pid": os.getpid(), **extra}) + "\n"
    fd = os.open(DIR / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def gate_open(tag: str) -> bool:
    return (DIR / f"gate-{tag}").exists()


def wait_for_gate(tag: str) -> None:
    deadline = time.monotonic() + GATE_WAIT_S
    while not gate_open(tag) and time.monotonic() < deadline:
        time.sleep(0.01)


@gpuserve.service(backend="cpu")
class Streams:
    @gpuserve.api
    def gated(self, tag: str) -> Iterator[str]:
        """'first', then 'second' once the gate opens."""
        yield "first"
        event("waiting", tag)
        wait_for_gate(tag)
        yield "second"

    @gpuserve.api
    def ticks(self, tag: str, interval: float) -> Iterator[int]:
        """A value every `interval` seconds, for as long as anyone reads."""
        event("started", tag)
        try:
            for i in range(10**9):
                yield i
                time.sleep(interval)
        finally:
            event("closed", tag)

    @gpuserve.api
    async def aticks(self, tag: str, interval: float) -> AsyncIterator[int]:
        event("started", tag)
        try:
            for i in range(10**9):
                yield i
                try:
                    await asyncio.sleep(interval)
                except asyncio.CancelledError:
                    event("cancelled", tag)
                    raise
        finally:
            event("closed", tag)

    @gpuserve.api
    def big(self, tag: str, size: int) -> Iterator[str]:
        """Values of `size` characters, each made only when asked for; journals how many it made."""
        value = "x" * size
        try:
            for i in range(10**9):
                event("made", tag, count=i + 1)
                yield value
        finally:
            event("closed", tag)

    @gpuserve.api
    def numbers(self, n: int, fail: bool = False) -> Iterator[int]:
        """0..n-1, then a ValueError if asked for."""
        yield from range(n)
        if fail:
            raise ValueError(f"failed after {n} values")

    @gpuserve.api
    def fails_at_once(self, tag: str) -> Iterator[int]:
        raise KeyError(tag)
        yield 0

    @gpuserve.api
    async def silent(self, tag: str, first: bool, seconds: float) -> AsyncIterator[str]:
        """One value unless `first` is false, then silence for `seconds`."""
        event("started", tag)
        try:
            if first:
                yield "hello"
            await asyncio.sleep(seconds)
            yield "late"
        except asyncio.CancelledError:
            event("cancelled", tag)
            raise
        finally:
            event("closed", tag)

    @gpuserve.api
    def nothing(self) -> Iterator[int]:
        return
        yield 0

    @gpuserve.api
    def ping(self) -> str:
        return "pong"

    @gpuserve.api(batchable=True, max_batch_size=8)
    def spell(self, word: list[str], tag: list[str]) -> Iterator[list[str]]:
        """Each word's letters, one per step; journals the rows taking part in each step."""
        words = list(word)
        tags = list(tag)
        at = 0
        try:
            while words:
                event("step", tags[0], rows=tags)
                keep = yield [w[at] if at < len(w) else gpuserve.END for w in words]
                words = [words[k] for k in keep]
                tags = [tags[k] for k in keep]
                at += 1
                if tags:
                    wait_for_gate(tags[0])  # the first row's client paces the batch
        finally:
            event("closed", "|".join(tag))

    @gpuserve.api(batchable=True, max_batch_size=8)
    async def aspell(self, word: list[str]) -> AsyncIterator[list[str]]:
        """As `spell`, async, and unaware of rows that stop taking part (a value for every row it started with)."""
        for at in range(max(map(len, word))):
            await asyncio.sleep(0)
            yield [w[at] if at < len(w) else gpuserve.END for w in word]


@gpuserve.service(backend="cpu", isolation="process")
class StreamsProcess(Streams):
    pass
