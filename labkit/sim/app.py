"""HTTP routes of the simulator: OpenAI-compatible /v1 endpoints, /health and the /admin API.

Handlers check auth, validate, charge the rate limiter, draw fault decisions and then let the engine
pace the answer. Everything a client sees (headers, error bodies, SSE framing) is shaped like the real
API so that client code and the official SDK run unchanged. Streamed chunks are assembled from
precomputed byte fragments: a chunk costs a few byte concatenations and one write.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import random
import time
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from labkit.sim import batches, errors
from labkit.sim.config import Profile, SimConfig
from labkit.sim.engine import Engine
from labkit.sim.errors import APIError
from labkit.sim.faults import NO_FAULT, Decision, FaultConfigError, Faults
from labkit.sim.prefixcache import PrefixCache, prompt_tokens
from labkit.sim.ratelimit import DEFAULT_RPM, DEFAULT_TPM, LimitsConfigError, RateLimiter
from labkit.sim.stats import Stats
from labkit.sim.text import pool_for, request_fingerprint
from labkit.sim.validation import ChatParams, chat_params, embedding_params, parse_json
from labkit.tokens import count_text

log = logging.getLogger("labkit.sim")

MODEL_CREATED = 1715367049  # a fixed "created" for model objects, as the real list shows fixed dates
_STATIC_HEADERS = {"openai-organization": "labkit-sim", "openai-version": "2020-10-01"}
_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    **_STATIC_HEADERS,
}
_DONE = b"data: [DONE]\n\n"
_ZERO_COMPLETION_DETAILS = {
    "reasoning_tokens": 0,
    "audio_tokens": 0,
    "accepted_prediction_tokens": 0,
    "rejected_prediction_tokens": 0,
}


class SimState:
    """Everything one instance shares across requests: profile, engine, limiter, faults, caches, counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.profile: Profile = config.load_profile()
        self.engine = Engine(self.profile)
        self.limiter = RateLimiter(config.rpm or DEFAULT_RPM, config.tpm or DEFAULT_TPM)
        self.faults = Faults(config.faults, default_seed=config.seed)
        self.cache = PrefixCache(config.prefix_cache_entries, config.prefix_cache_ttl_s)
        self.stats = Stats()
        self.rng = random.Random(config.seed)
        self.seed_bytes = str(config.seed).encode()
        self.fingerprint = "fp_" + hashlib.blake2b(f"{config.seed}:{self.profile.name}".encode()).hexdigest()[:10]
        self.started_at = time.monotonic()
        for model in self.profile.models:  # load tokenizers and token pools now, not on the first request
            pool_for(model)

    def reset(self) -> None:
        """Back to the state at start-up: counters zeroed, rate-limit usage and cached prefixes forgotten,
        the start-up fault config and limits restored, and the seeded fault stream restarted."""
        self.stats.reset()
        self.engine.reset_counters()
        self.limiter = RateLimiter(self.config.rpm or DEFAULT_RPM, self.config.tpm or DEFAULT_TPM)
        self.cache.clear()
        self.faults = Faults(self.config.faults, default_seed=self.config.seed)
        self.rng = random.Random(self.config.seed)

    # -- request plumbing -------------------------------------------------------------------------

    def auth(self, request: web.Request) -> str:
        """The caller's API key from `Authorization: Bearer <key>`, or a 401."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise errors.missing_key()
        if self.config.api_keys is not None and key not in self.config.api_keys:
            raise errors.bad_key(key)
        request["api_key"] = key
        return key

    async def read_json(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object; 413 past the size limit, 400 when it is not a JSON object."""
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(limit) from None
        return parse_json(raw)

    def admit(self, request: web.Request, key: str, model: str, cost: int) -> Decision:
        """Account-level checks, rate limits and the request's fault decision; raises the error to answer."""
        if self.faults.quota_exhausted(key):
            raise errors.insufficient_quota()
        storm = self.faults.storm_remaining_s()
        if storm > 0:
            limits = self.limiter.headers(key)
            raise errors.rate_limited(
                "requests",
                int(limits["x-ratelimit-limit-requests"]),
                int(limits["x-ratelimit-limit-requests"]),
                1,
                storm,
                model,
            )
        request["rl"] = self.limiter.acquire(key, cost, model)
        decision = self.faults.decide()
        if decision.error is not None:
            kind = decision.error
            if kind == "429":
                limits = request["rl"]
                raise errors.rate_limited(
                    "requests",
                    int(limits["x-ratelimit-limit-requests"]),
                    int(limits["x-ratelimit-limit-requests"]),
                    1,
                    self.faults.config["retry_after_s"],
                    model,
                )
            raise {
                "500": errors.server_error,
                "502": errors.bad_gateway,
                "503": errors.overloaded,
                "insufficient_quota": errors.insufficient_quota,
            }[kind]()
        return decision

    def response_headers(self, request: web.Request, t0: float) -> dict[str, str]:
        """x-request-id, openai-processing-ms and, under /v1, the six rate-limit headers."""
        headers = {
            "x-request-id": request["rid"],
            "openai-processing-ms": str(int((time.monotonic() - t0) * 1000)),
            **_STATIC_HEADERS,
        }
        if request.path.startswith("/v1/"):
            rl = request.get("rl")
            headers.update(rl if rl is not None else self.limiter.headers(request.get("api_key", "")))
        return headers

    async def prelude(self, request: web.Request, decision: Decision) -> None:
        """Faults that act before any answer: a slow first byte, or a hang until the client gives up."""
        if decision.slow_first_byte_s > 0:
            await asyncio.sleep(decision.slow_first_byte_s)
        if decision.hang:
            while True:  # also works when the server does not cancel handlers on disconnect
                transport = request.transport
                if transport is None or transport.is_closing():
                    raise _ClientGone
                await asyncio.sleep(0.25)


class _ClientGone(Exception):
    """The client disconnected before it could be answered."""


def _too_large(limit: int) -> APIError:
    return errors.invalid_request(
        f"Request body too large: the maximum is {limit} bytes.", code="request_too_large", status=413
    )


STATE: web.AppKey[SimState] = web.AppKey("labkit_sim_state", SimState)


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
        except (_ClientGone, ConnectionError):
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
        return _too_large(request.app[STATE].config.max_body_bytes)
    return APIError(e.status, e.reason or "Error", "invalid_request_error")


# -- /v1/chat/completions ---------------------------------------------------------------------------


def _answer_rng(st: SimState, p: ChatParams, model: str) -> random.Random:
    """Deterministic per request at temperature 0 or with a `seed`; otherwise the next draw of the
    service's seeded stream (so a run is still reproducible in arrival order)."""
    if p.temperature == 0.0 or p.seed is not None:
        digest = hashlib.blake2b(st.seed_bytes + request_fingerprint(model, p.messages, p.max_tokens, p.seed))
        return random.Random(digest.digest())
    return random.Random(st.rng.getrandbits(64))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    loop = asyncio.get_running_loop()
    t_arrival = loop.time()
    key = st.auth(request)
    p = chat_params(await st.read_json(request))
    profile = st.profile
    model = profile.resolve(p.model)
    if model is None:
        raise errors.model_not_found(p.model)
    cap = p.max_tokens
    if cap is not None and cap > profile.max_output_tokens:
        raise errors.invalid_request(
            f"max_tokens is too large: {cap}. This model supports at most {profile.max_output_tokens} "
            "completion tokens, whereas you provided "
            f"{cap}.",
            param="max_tokens",
            code="invalid_value",
        )
    n_prompt, ids = prompt_tokens(p.messages, model, want_ids=True)
    if n_prompt + (cap or 0) > profile.context_window:
        raise errors.invalid_request(
            f"This model's maximum context length is {profile.context_window} tokens. However, you requested "
            f"{n_prompt + (cap or 0)} tokens ({n_prompt} in the messages, {cap or 0} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )
    estimate = cap if cap is not None else st.limiter.default_completion_estimate
    decision = st.admit(request, key, p.model, n_prompt + estimate)
    await st.prelude(request, decision)
    start = t_arrival if decision.slow_first_byte_s == 0 else loop.time()
    engine = st.engine
    if await engine.acquire():
        start = loop.time()
    try:
        cached = st.cache.lookup_and_store(model, ids)
        first_at = start + engine.first_token_delay(n_prompt - cached)
        rng = _answer_rng(st, p, model)
        sampled = profile.output_tokens.sample(rng)
        n = sampled if cap is None else min(cap, sampled)
        finish = "length" if cap is not None and cap < sampled else "stop"
        pool = pool_for(model)
        tokens = pool.generate(rng, n, pool.topic_words(p.messages))
        usage = {
            "prompt_tokens": n_prompt,
            "completion_tokens": n,
            "total_tokens": n_prompt + n,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": _ZERO_COMPLETION_DETAILS,
        }
        if p.stream:
            resp = await _stream(request, st, model, p, tokens, finish, usage, first_at, decision)
        else:
            resp = await _complete(request, st, model, tokens, finish, usage, first_at, decision)
        st.limiter.refund(key, estimate - n)
        return resp
    finally:
        engine.release()


async def _complete(
    request: web.Request,
    st: SimState,
    model: str,
    tokens: list[int],
    finish: str,
    usage: dict[str, Any],
    first_at: float,
    decision: Decision,
) -> web.StreamResponse:
    """A non-streaming answer: the same generation time, the whole body at the end."""
    async for _ in st.engine.pace(len(tokens), first_at, coalesce_s=0.25):
        pass
    if decision.drop_at is not None:
        _abort(request, st)
    body = {
        "id": "chatcmpl-" + os.urandom(12).hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": pool_for(model).text(tokens),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": st.fingerprint,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _abort(request: web.Request, st: SimState) -> None:
    """Close the TCP connection abruptly (a dropped connection fault)."""
    st.stats.dropped += 1
    request["counted_disconnect"] = True
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise ConnectionResetError("connection dropped by fault injection")


async def _stream(
    request: web.Request,
    st: SimState,
    model: str,
    p: ChatParams,
    tokens: list[int],
    finish: str,
    usage: dict[str, Any],
    first_at: float,
    decision: Decision,
) -> web.StreamResponse:
    """Server-sent events: role chunk and first token at TTFT, then one chunk per token as it is due.

    The status line and headers go out with the first token, as the real API sends them (its
    `openai-processing-ms` is about the time to first token): nothing is written while the answer is being
    prefilled, so a burst of arrivals costs one write per stream, not two."""
    resp = web.StreamResponse(status=200)
    cid = "chatcmpl-" + os.urandom(12).hex()
    created = int(time.time())
    head = (
        b'data: {"id":"'
        + cid.encode()
        + b'","object":"chat.completion.chunk","created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"service_tier":"default","system_fingerprint":"'
        + st.fingerprint.encode()
        + b'","choices":[{"index":0,"delta":{'
    )
    usage_null = b',"usage":null' if p.include_usage else b""
    tail = b'},"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
    last_tail = b'},"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]' + usage_null + b"}\n\n"
    content_head = head + b'"content":'
    pieces = pool_for(model).json
    n = len(tokens)
    stop_at = n  # stream faults cut the answer short after this many tokens
    if decision.drop_at is not None:
        stop_at = min(stop_at, max(1, min(n - 1, int(decision.drop_at * n))) if n > 1 else 0)
    if decision.stream_error_at is not None:
        stop_at = min(stop_at, max(1, min(n - 1, int(decision.stream_error_at * n))) if n > 1 else 0)
    sent = 0

    async def begin() -> None:
        resp.headers.update(_STREAM_HEADERS)
        resp.headers.update(st.response_headers(request, request["t0"]))
        await resp.prepare(request)
        request["status_sent"] = 200

    try:
        pending: list[bytes] = [head + b'"role":"assistant","content":""' + tail]
        async for due in st.engine.pace(n, first_at):
            if not resp.prepared:  # the role chunk and the first token are due
                await begin()
                st.stats.first_token_sent(asyncio.get_running_loop().time() - first_at)
            end = min(sent + due, stop_at)
            for i in range(sent, end):
                pending.append(content_head + pieces[tokens[i]] + (last_tail if i == n - 1 else tail))
            sent = end
            if sent >= stop_at and stop_at < n:
                break
            await resp.write(b"".join(pending))
            pending = []
        if not resp.prepared:  # no token at all (max_tokens=0 is refused, but be safe)
            await begin()
        if stop_at < n:  # a stream fault: the error event wins if both were drawn for the same point
            if decision.stream_error_at is not None and (
                decision.drop_at is None or decision.stream_error_at <= decision.drop_at
            ):
                st.stats.stream_errors += 1
                pending.append(b"data: " + orjson.dumps(errors.server_error().body()) + b"\n\n")
                await resp.write(b"".join(pending))
                await resp.write_eof()
                return resp
            if pending:
                await resp.write(b"".join(pending))
            _abort(request, st)
        if p.include_usage:
            final = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": st.fingerprint,
                "choices": [],
                "usage": usage,
            }
            pending.append(b"data: " + orjson.dumps(final) + b"\n\n")
        pending.append(_DONE)
        await resp.write(b"".join(pending))
        await resp.write_eof()
    except ConnectionError:
        if not request.get("counted_disconnect"):
            st.stats.disconnects += 1
            request["counted_disconnect"] = True
        raise
    return resp


# -- /v1/embeddings ---------------------------------------------------------------------------------


def _vector(model: str, item: str | list[int], native_dim: int, dim: int) -> np.ndarray:
    """A deterministic unit vector from a hash of the input (shortened vectors are re-normalised, as
    text-embedding-3's `dimensions` does)."""
    data = item.encode() if isinstance(item, str) else orjson.dumps(item)
    seed = int.from_bytes(hashlib.blake2b(model.encode() + b"\0" + data, digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(native_dim, dtype=np.float32)[:dim]
    return v / np.linalg.norm(v)


async def embeddings(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    loop = asyncio.get_running_loop()
    t_arrival = loop.time()
    key = st.auth(request)
    p = embedding_params(await st.read_json(request))
    native = st.profile.embedding_models.get(p.model)
    if native is None:
        raise errors.model_not_found(p.model)
    dim = native
    if p.dimensions is not None:
        if p.model == "text-embedding-ada-002":
            raise errors.invalid_request("This model does not support specifying dimensions.", param="dimensions")
        if p.dimensions > native:
            raise errors.invalid_request(
                f"Invalid 'dimensions': at most {native} for {p.model}, got {p.dimensions}.",
                param="dimensions",
                code="invalid_value",
            )
        dim = p.dimensions
    counts = [count_text(x, p.model) if isinstance(x, str) else len(x) for x in p.inputs]
    for i, c in enumerate(counts):
        if c > 8192:
            raise errors.invalid_request(
                f"This model's maximum context length is 8192 tokens, however you requested {c} tokens "
                f"(input {i}). Please reduce your prompt.",
                param="input",
                code="context_length_exceeded",
            )
    total = sum(counts)
    decision = st.admit(request, key, p.model, total)
    await st.prelude(request, decision)
    prof = st.profile
    delay = prof.embedding_latency_s + (total / prof.embedding_tokens_per_s if prof.embedding_tokens_per_s else 0)
    remaining = t_arrival + delay - loop.time()
    if remaining > 0:
        await asyncio.sleep(remaining)
    if decision.drop_at is not None:
        _abort(request, st)
    data = []
    for i, item in enumerate(p.inputs):
        v = _vector(p.model, item, native, dim)
        emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if p.encoding_format == "base64" else v
        data.append({"object": "embedding", "index": i, "embedding": emb})
    body = {"object": "list", "data": data, "model": p.model, "usage": {"prompt_tokens": total, "total_tokens": total}}
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")


# -- /v1/models -------------------------------------------------------------------------------------


def _model_obj(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}


async def list_models(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.auth(request)
    body = {"object": "list", "data": [_model_obj(m) for m in st.profile.model_ids()]}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def get_model(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    st.auth(request)
    model_id = request.match_info["model"]
    if model_id not in st.profile.model_ids():
        raise errors.model_not_found(model_id)
    return web.Response(body=orjson.dumps(_model_obj(model_id)), content_type="application/json")


# -- /health and /admin -----------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def health(request: web.Request) -> web.StreamResponse:
    return _json({"status": "ok"})


async def get_faults(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    return _json({**st.faults.config, "storm_remaining_s": round(st.faults.storm_remaining_s(), 3)})


async def put_faults(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    body = await st.read_json(request)
    try:
        return _json(st.faults.replace(body))
    except FaultConfigError as e:
        raise errors.invalid_request(f"Invalid fault config: {e}", param="faults") from None


async def get_limits(request: web.Request) -> web.StreamResponse:
    return _json(request.app[STATE].limiter.config())


async def put_limits(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    body = await st.read_json(request)
    try:
        return _json(st.limiter.replace(body))
    except LimitsConfigError as e:
        raise errors.invalid_request(f"Invalid limits: {e}", param="limits") from None


async def get_stats(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    snap = st.stats.snapshot(st.engine, len(st.cache))
    snap["profile"] = st.profile.name
    snap["uptime_s"] = round(time.monotonic() - st.started_at, 3)
    return _json(snap)


async def get_profile(request: web.Request) -> web.StreamResponse:
    return _json(request.app[STATE].profile.public())


async def post_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return _json({"status": "reset"})


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
    app.router.add_get("/health", health)
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_put("/admin/faults", put_faults)
    app.router.add_get("/admin/limits", get_limits)
    app.router.add_put("/admin/limits", put_limits)
    app.router.add_get("/admin/stats", get_stats)
    app.router.add_get("/admin/profile", get_profile)
    app.router.add_post("/admin/reset", post_reset)
    return app


__all__ = ["NO_FAULT", "STATE", "SimState", "create_app"]
