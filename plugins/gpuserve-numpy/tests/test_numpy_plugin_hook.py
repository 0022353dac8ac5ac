"""The `gpuserve.plugins` hook on a bare aiohttp application."""

from __future__ import annotations

import asyncio

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gpuserve_numpy.plugin import ROUTE, setup


def test_setup_adds_the_numpy_route() -> None:
    async def scenario() -> tuple[int, object]:
        app = web.Application()
        setup(app)
        async with TestClient(TestServer(app)) as client:
            response = await client.get(ROUTE)
            return response.status, await response.json()

    assert asyncio.run(scenario()) == (200, {"numpy": np.__version__})
