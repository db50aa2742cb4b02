"""What one simulator instance shares across requests, and the plumbing every route goes through.

`SimState` holds the profile, engine, rate limiter, fault stream, prefix cache and counters; its methods do
what each handler does first (auth, read the JSON body, admit: quota, limits and the fault decision) and the
faults that act before an answer. Kept apart from the routes so that the chat, embeddings, batch and admin
handlers share one state without importing each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from typing import Any

import orjson
from aiohttp import web

from labkit.sim import errors
from labkit.sim.config import Profile, SimConfig
from labkit.sim.engine import Engine
from labkit.sim.errors import APIError
from labkit.sim.faults import Decision, Faults
from labkit.sim.prefixcache import PrefixCache
from labkit.sim.ratelimit import DEFAULT_RPM, DEFAULT_TPM, RateLimiter
from labkit.sim.stats import Stats
from labkit.sim.text import pool_for
from labkit.sim.validation import parse_json

STATIC_HEADERS = {"openai-organization": "labkit-sim", "openai-version": "2020-10-01"}


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
            raise too_large(limit)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(limit) from None
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
            **STATIC_HEADERS,
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
                    raise ClientGone
                await asyncio.sleep(0.25)

    def abort(self, request: web.Request) -> None:
        """Close the TCP connection abruptly (a dropped connection fault)."""
        self.stats.dropped += 1
        request["counted_disconnect"] = True
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise ConnectionResetError("connection dropped by fault injection")


class ClientGone(Exception):
    """The client disconnected before it could be answered."""


def too_large(limit: int) -> APIError:
    """The 413 the real API answers for a body over its size limit."""
    return errors.invalid_request(
        f"Request body too large: the maximum is {limit} bytes.", code="request_too_large", status=413
    )


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON body with the content type the real API sends (orjson: the admin and batch answers are small)."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


STATE: web.AppKey[SimState] = web.AppKey("labkit_sim_state", SimState)

__all__ = ["STATE", "STATIC_HEADERS", "ClientGone", "SimState", "json_response", "too_large"]
