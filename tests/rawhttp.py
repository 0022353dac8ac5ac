"""HTTP/1.1 by hand over a socket: what a slow, hostile or careless client sends, and what comes back."""

from __future__ import annotations

import socket
import time

import attrs


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def head(path: str, *, method: str = "POST", length: int | None = None, chunked: bool = False,
         extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return head(path, length=len(body), extra=extra) + body


def read_answer(sock: socket.socket) -> Answer | None:
    """The next answer on `sock`, or None when the server closed it first (`socket.timeout` if neither)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` (after any answer it sends) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False
