"""Start a real `python -m gpuserve serve` on a free port and talk to it over HTTP.

The kit's own helpers (`gpuserve.testing.serving`), with this suite's apps folder as the default.
"""

from __future__ import annotations

import functools
from pathlib import Path

from gpuserve.testing import serving as _kit
from gpuserve.testing.serving import Reply, Server, free_port, request, server_env, wait_until_running

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"

serve = functools.partial(_kit.serve, cwd=APPS)

__all__ = ["APPS", "ROOT", "Reply", "Server", "free_port", "request", "serve", "server_env", "wait_until_running"]
