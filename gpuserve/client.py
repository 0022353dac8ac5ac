"""Call a running gpuserve server's APIs as methods.

    from gpuserve.client import Client

    with Client("http://127.0.0.1:3000") as client:
        print(client.predict(x=[[0.5, -1.2, 3.3, 0.0, 2.1, -0.7, 1.5, 0.9]]))

    async with AsyncClient("http://127.0.0.1:3000") as client:
        print(await client.predict(x=...))

Arguments are sent as the JSON body (NumPy arrays included), the JSON answer
comes back decoded. An error answer raises a typed exception carrying its
status, message and request id: `BadRequestError` (4xx), `ServerError` (5xx),
`UnavailableError` (503, with `retry_after` in seconds) and `DeadlineError`
(504). `call(api, arguments, timeout=..., request_id=...)` gives the request
its own deadline (the `X-Request-Timeout` header) or id; `api_key=` is sent
to a server started with `--api-key` (a 401 raises `BadRequestError`).

A streaming API's values come one by one from `stream(api, arguments)` (an
iterator; an async iterator from `AsyncClient`), each as the server sends it:

    for token in client.stream("generate", {"prompt": ["Once"]}):
        print(token, end="", flush=True)

An error event raises `StreamError` (`type` or `reason` in its `body`), as
does a stream cut short before its end.
"""

from __future__ import annotations

import functools
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import orjson

TIMEOUT_HEADER = "X-Request-Timeout"
ID_HEADER = "X-Request-ID"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class ClientError(Exception):
    """An error answer: `status`, the server's `message`, the request's id and the decoded `body`."""

    def __init__(self, status: int, message: str, request_id: str | None, body: Any) -> None:
        super().__init__(f"{status}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.status = status
        self.message = message
        self.request_id = request_id
        self.body = body


class BadRequestError(ClientError):
    """4xx: the request itself is wrong (invalid arguments, unknown API, too large)."""


class ServerError(ClientError):
    """5xx: the server or the API's code failed."""


class UnavailableError(ServerError):
    """503: not ready, overloaded or stopping; `retry_after` says when trying again may work."""

    def __init__(self, status: int, message: str, request_id: str | None, body: Any,
                 retry_after: float | None) -> None:
        super().__init__(status, message, request_id, body)
        self.retry_after = retry_after


class DeadlineError(ServerError):
    """504: the request's deadline passed before it was answered."""


class StreamError(ClientError):
    """A stream that ended early: an error event (its `body` names the exception's `type` or the limit's
    `reason`), or a stream cut before its end."""


def _error(status: int, raw: bytes, headers: Mapping[str, str]) -> ClientError:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = raw.decode(errors="replace")
    message = body.get("error", "") if isinstance(body, dict) else str(body)
    request_id = headers.get(ID_HEADER)
    if status == 503:
        retry = headers.get("Retry-After")
        return UnavailableError(status, message, request_id, body, float(retry) if retry else None)
    if status == 504:
        return DeadlineError(status, message, request_id, body)
    kind = ServerError if status >= 500 else BadRequestError
    return kind(status, message, request_id, body)


_DONE = "[DONE]"  # the last event of every stream


class _Events:
    """Server-Sent Events from the lines of a stream: each event as (kind, data) when its blank line comes."""

    def __init__(self) -> None:
        self.kind, self.data = "message", []

    def feed(self, raw: bytes) -> tuple[str, str] | None:
        line = raw.decode().rstrip("\r\n")
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                self.kind = value
            elif field == "data":
                self.data.append(value)
            return None
        event = (self.kind, "\n".join(self.data)) if self.data else None
        self.kind, self.data = "message", []
        return event


def _value(event: tuple[str, str], status: int, request_id: str | None) -> Any:
    kind, data = event
    body = orjson.loads(data)
    if kind == "error":
        raise StreamError(status, body.get("error", ""), request_id, body)
    return body


def _cut(status: int, request_id: str | None) -> StreamError:
    return StreamError(status, "the stream was cut before its end", request_id, None)


def _request_headers(timeout: float | None, request_id: str | None, api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    if timeout is not None:
        headers[TIMEOUT_HEADER] = repr(float(timeout))
    if request_id is not None:
        headers[ID_HEADER] = request_id
    return headers


class Client:
    """A blocking client (standard library HTTP). `timeout`: seconds to wait for each answer;
    `api_key`: sent as `Authorization: Bearer <key>` to a server that asks for one."""

    def __init__(self, url: str = "http://127.0.0.1:3000", *, timeout: float = 60.0,
                 api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key

    def call(self, api: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None,
             request_id: str | None = None) -> Any:
        """`POST /<api>` with `arguments` as the body; its decoded answer, or a `ClientError`."""
        request = urllib.request.Request(
            f"{self.url}/{api}", data=orjson.dumps(dict(arguments or {}), option=_OPTIONS), method="POST",
            headers=_request_headers(timeout, request_id, self.api_key),
        )
        wait = self.timeout if timeout is None else max(self.timeout, timeout + 1)
        try:
            with urllib.request.urlopen(request, timeout=wait) as answer:
                return orjson.loads(answer.read())
        except urllib.error.HTTPError as failed:
            raise _error(failed.code, failed.read(), failed.headers) from None

    def stream(self, api: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None,
               request_id: str | None = None) -> Iterator[Any]:
        """`POST /<api>` of a streaming API: its values as they arrive; `timeout`: the deadline to the first."""
        request = urllib.request.Request(
            f"{self.url}/{api}", data=orjson.dumps(dict(arguments or {}), option=_OPTIONS), method="POST",
            headers={**_request_headers(timeout, request_id, self.api_key), "Accept": "text/event-stream"},
        )
        wait = self.timeout if timeout is None else max(self.timeout, timeout + 1)
        try:
            answer = urllib.request.urlopen(request, timeout=wait)
        except urllib.error.HTTPError as failed:
            raise _error(failed.code, failed.read(), failed.headers) from None
        with answer:
            events, rid = _Events(), answer.headers.get(ID_HEADER)
            for raw in answer:
                event = events.feed(raw)
                if event is not None:
                    if event[1] == _DONE:
                        return
                    yield _value(event, answer.status, rid)
        raise _cut(answer.status, rid)

    def ready(self) -> bool:
        """Whether the server answers `/readyz` with 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=self.timeout) as answer:
                return answer.status == 200
        except urllib.error.HTTPError:
            return False

    def __getattr__(self, api: str) -> Callable[..., Any]:
        if api.startswith("_"):
            raise AttributeError(api)
        return functools.partial(self._call_with_keywords, api)

    def _call_with_keywords(self, api: str, **arguments: Any) -> Any:
        return self.call(api, arguments)

    def close(self) -> None:
        """Nothing to release (a connection per call); here for symmetry with `AsyncClient`."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """An asyncio client over one aiohttp session (reused connections). Close it, or use `async with`."""

    def __init__(self, url: str = "http://127.0.0.1:3000", *, timeout: float = 60.0,
                 api_key: str | None = None) -> None:
        import aiohttp

        self.url = url.rstrip("/")
        self._timeout = timeout
        self.api_key = api_key
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def call(self, api: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None,
                   request_id: str | None = None) -> Any:
        """`POST /<api>` with `arguments` as the body; its decoded answer, or a `ClientError`."""
        async with self._session.post(
            f"{self.url}/{api}", data=orjson.dumps(dict(arguments or {}), option=_OPTIONS),
            headers=_request_headers(timeout, request_id, self.api_key),
        ) as answer:
            raw = await answer.read()
            if answer.status >= 400:
                raise _error(answer.status, raw, answer.headers)
            return orjson.loads(raw)

    async def stream(self, api: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None,
                     request_id: str | None = None) -> AsyncIterator[Any]:
        """`POST /<api>` of a streaming API: its values as they arrive; `timeout`: the deadline to the first."""
        import aiohttp

        async with self._session.post(
            f"{self.url}/{api}", data=orjson.dumps(dict(arguments or {}), option=_OPTIONS),
            headers={**_request_headers(timeout, request_id, self.api_key), "Accept": "text/event-stream"},
            # A stream may last longer than any one answer: only the wait for each piece is bounded.
            timeout=aiohttp.ClientTimeout(total=None, sock_read=self._timeout),
        ) as answer:
            if answer.status >= 400:
                raise _error(answer.status, await answer.read(), answer.headers)
            events, rid = _Events(), answer.headers.get(ID_HEADER)
            async for raw in answer.content:
                event = events.feed(raw)
                if event is not None:
                    if event[1] == _DONE:
                        return
                    yield _value(event, answer.status, rid)
        raise _cut(answer.status, rid)

    async def ready(self) -> bool:
        async with self._session.get(f"{self.url}/readyz") as answer:
            return answer.status == 200

    def __getattr__(self, api: str) -> Callable[..., Awaitable[Any]]:
        if api.startswith("_"):
            raise AttributeError(api)
        return functools.partial(self._call_with_keywords, api)

    async def _call_with_keywords(self, api: str, **arguments: Any) -> Any:
        return await self.call(api, arguments)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
