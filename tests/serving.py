"""The test kit's real servers (`gpuserve.testing.served`), started from this suite's app folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpuserve.testing.batching_client import wait_until_running
from gpuserve.testing.served import Reply, Server, free_port, request, server_env
from gpuserve.testing.served import serve as _serve

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"

__all__ = ["APPS", "ROOT", "Reply", "Server", "free_port", "request", "serve", "server_env", "wait_until_running"]


def serve(ref: str, *args: str, cwd: Path = APPS, **kw: Any):
    return _serve(ref, *args, cwd=cwd, **kw)
