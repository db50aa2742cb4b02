"""The simulator as an aiohttp application: its middleware, the /v1/models routes, and `create_app`.

Handlers check auth, validate, charge the rate limiter, draw fault decisions and then let the engine pace the
answer. Everything a client sees (headers, error bodies, SSE framing) is shaped like the real API so that client
code and the official SDK run unchanged. The routes live by what they serve: `labkit.sim.chat`,
`labkit.sim.embeddings`, `labkit.sim.batches` and `labkit.sim.admin`; the state they share is
`labkit.sim.state`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from aiohttp import web

from labkit.sim import admin, batches, errors
from labkit.sim.chat import chat_completions
from labkit.sim.config import SimConfig
from labkit.sim.embeddings import embeddings
from labkit.sim.errors import APIError
from labkit.sim.faults import NO_FAULT
from labkit.sim.state import STATE, ClientGone, SimState, json_response, too_large

log = logging.getLogger("labkit.sim")

MODEL_CREATED = 1715367049  # a fixed "created" for model objects, as the real list shows fixed dates


# -- middleware -------------------------------------------------------------------------------------


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request ids, timing headers, counters, and OpenAI-shaped bodies for every error (404/405/413 too)."""
    st = request.app[STATE]
    t0 = time.monotonic()
    request["rid"] = "req_" + os.urandom(16).hex()
    request["t0"] = t0
    stats = st.stats
    stats.saw_connection(request.protocol)
    if not request.path.startswith("/v1/"):  # /health and /admin are not traffic: no request counters
        return await _answer(request, handler, st, t0)
    stats.started()
    status: int | None = None
    try:
        try:
            resp = await handler(request)
        except APIError as e:
            resp = e.response()
        except web.HTTPException as e:
            resp = _http_error(request, e).response({"Allow": e.headers["Allow"]} if "Allow" in e.headers else None)
        except (ClientGone, ConnectionError):
            # the client is gone (or a fault dropped it): nothing can be sent; aiohttp ignores the write error
            if not request.get("counted_disconnect"):
                stats.disconnects += 1
            status = request.get("status_sent", 499)
            return web.Response(status=499)
        except asyncio.CancelledError:  # handler cancelled because the client disconnected
            if not request.get("counted_disconnect"):
                stats.disconnects += 1
            status = request.get("status_sent")
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            resp = errors.server_error().response()
        if not resp.prepared:
            resp.headers.update(st.response_headers(request, t0))
        status = resp.status
        return resp
    finally:
        stats.active_requests -= 1
        if status is not None:
            stats.by_status[status] += 1


async def _answer(request: web.Request, handler: Any, st: SimState, t0: float) -> web.StreamResponse:
    """Run an uncounted (admin/health) handler with the same error shaping and headers."""
    try:
        resp = await handler(request)
    except APIError as e:
        resp = e.response()
    except web.HTTPException as e:
        resp = _http_error(request, e).response({"Allow": e.headers["Allow"]} if "Allow" in e.headers else None)
    if not resp.prepared:
        resp.headers.update(st.response_headers(request, t0))
    return resp


def _http_error(request: web.Request, e: web.HTTPException) -> APIError:
    if e.status == 404:
        return APIError(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
    if e.status == 405:
        return APIError(405, f"Invalid method for URL ({request.method} {request.path})", "invalid_request_error")
    if e.status == 413:
        return too_large(request.app[STATE].config.max_body_bytes)
    return APIError(e.status, e.reason or "Error", "invalid_request_error")


# -- /v1/models -------------------------------------------------------------------------------------


def _model_obj(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}


async def list_models(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.auth(request)
    body = {"object": "list", "data": [_model_obj(m) for m in st.profile.model_ids()]}
    return json_response(body)


async def get_model(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.auth(request)
    model_id = request.match_info["model"]
    if model_id not in st.profile.model_ids():
        raise errors.model_not_found(model_id)
    return json_response(_model_obj(model_id))


def create_app(config: SimConfig | None = None) -> web.Application:
    """The simulator as an aiohttp application (run it with `handler_cancellation=True` so a client that
    goes away while queued or waiting frees its slot at once; `labkit.sim.run` and the CLI do)."""
    config = config or SimConfig()
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_middleware])
    app[STATE] = SimState(config)
    batches.setup(app, app[STATE])
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    admin.add_routes(app, admin_routes=config.admin_routes)
    return app


__all__ = ["NO_FAULT", "STATE", "SimState", "create_app"]
