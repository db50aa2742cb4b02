"""/health and the /admin API: what a lesson changes or reads on a running service without restarting it.

`PUT /admin/faults` and `PUT /admin/limits` replace the fault scenario and the rate limits; `GET /admin/stats`
reads the counters; `POST /admin/reset` goes back to the start-up state between two lesson steps. None of these
count as traffic (the middleware leaves them out of the request counters).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from labkit.sim import errors
from labkit.sim.faults import FaultConfigError
from labkit.sim.ratelimit import LimitsConfigError
from labkit.sim.state import STATE, json_response


async def health(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def get_faults(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    return json_response({**st.faults.config, "storm_remaining_s": round(st.faults.storm_remaining_s(), 3)})


async def _replace(
    request: web.Request,
    replace: Callable[[dict[str, Any]], dict[str, Any]],
    error: type[Exception],
    what: str,
    param: str,
) -> web.StreamResponse:
    """Apply a PUT body with `replace`; a config it refuses is a 400 naming `param`, as a bad request is."""
    body = await request.app[STATE].read_json(request)
    try:
        return json_response(replace(body))
    except error as e:
        raise errors.invalid_request(f"Invalid {what}: {e}", param=param) from None


async def put_faults(request: web.Request) -> web.StreamResponse:
    return await _replace(request, request.app[STATE].faults.replace, FaultConfigError, "fault config", "faults")


async def get_limits(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].limiter.config())


async def put_limits(request: web.Request) -> web.StreamResponse:
    return await _replace(request, request.app[STATE].limiter.replace, LimitsConfigError, "limits", "limits")


async def get_stats(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    snap = st.stats.snapshot(st.engine, len(st.cache))
    snap["profile"] = st.profile.name
    snap["uptime_s"] = round(time.monotonic() - st.started_at, 3)
    return json_response(snap)


async def get_profile(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].profile.public())


async def post_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return json_response({"status": "reset"})


def add_routes(app: web.Application, *, admin_routes: bool = True) -> None:
    """Register /health and, unless `admin_routes` is False (`--no-admin`), the /admin routes."""
    app.router.add_get("/health", health)
    if not admin_routes:
        return
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_put("/admin/faults", put_faults)
    app.router.add_get("/admin/limits", get_limits)
    app.router.add_put("/admin/limits", put_limits)
    app.router.add_get("/admin/stats", get_stats)
    app.router.add_get("/admin/profile", get_profile)
    app.router.add_post("/admin/reset", post_reset)


__all__ = ["add_routes"]
