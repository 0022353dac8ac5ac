"""A `gpuserve.plugins` hook: `GET /plugins/numpy` tells which NumPy serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

ROUTE = "/plugins/numpy"


def setup(app: web.Application) -> None:
    """Called by gpuserve with its application before the server starts."""
    # Imported here: listing or loading the backend alone needs no aiohttp.
    import numpy
    from aiohttp import web

    async def numpy_info(request: web.Request) -> web.Response:
        return web.json_response({"numpy": numpy.__version__})

    app.router.add_get(ROUTE, numpy_info)
