"""A test's side of a stream: one real HTTP connection, read event by event as it arrives."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from serving import Server

DONE = "[DONE]"


@attrs.frozen
class Event:
    data: Any  # decoded JSON, or "[DONE]"
    kind: str = "message"  # the SSE event type: "message" or "error"


class Stream:
    """`POST /<api>` with a JSON body, sent at once; its answer read incrementally (SSE events or NDJSON lines)
    from when it is first asked for (`status`, `headers`, reading)."""

    def __init__(self, server: Server, api: str, body: Mapping[str, Any], *, accept: str | None = None,
                 headers: Mapping[str, str] | None = None, receive_buffer: int | None = None,
                 timeout: float = 30) -> None:
        url = urlsplit(server.url)
        sock = socket.socket()
        if receive_buffer is not None:  # before connecting, so that the window stays this small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.connect((url.hostname, url.port))
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.connection.sock = sock
        sent = {"Content-Type": "application/json", **(headers or {})}
        if accept is not None:
            sent["Accept"] = accept
        self.connection.request("POST", f"/{api}", body=json.dumps(body), headers=sent)
        self._response: http.client.HTTPResponse | None = None

    @property
    def response(self) -> http.client.HTTPResponse:
        if self._response is None:
            self._response = self.connection.getresponse()
        return self._response

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.response.getheaders()}

    def json(self) -> Any:
        """The whole body of an answer that is not a stream (an error)."""
        return json.loads(self.response.read())

    def events(self) -> Iterator[Event]:
        """SSE events as they arrive; the last is `data: [DONE]`."""
        kind, data = "message", []
        while True:
            line = self.response.readline()
            if not line:
                return
            line = line.rstrip(b"\n").decode()
            if line:
                field, _, value = line.partition(": ")
                if field == "event":
                    kind = value
                elif field == "data":
                    data.append(value)
                continue
            text = "\n".join(data)
            yield Event(text if text == DONE else json.loads(text), kind)
            kind, data = "message", []

    def values(self, count: int) -> list[Any]:
        """The next `count` SSE values."""
        found = []
        for event in self.events():
            assert event.kind == "message" and event.data != DONE, event
            found.append(event.data)
            if len(found) == count:
                return found
        raise AssertionError(f"the stream ended after {len(found)} of {count} values")

    def lines(self) -> Iterator[Any]:
        """NDJSON values as they arrive."""
        while line := self.response.readline():
            yield json.loads(line)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        self.connection.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
