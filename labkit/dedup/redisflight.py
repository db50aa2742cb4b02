"""Coalescing across processes through Redis: several workers behind one Redis send one upstream call.

For a request with scope `k` (`labkit.scope.Scope`: tenant, namespace, model, fingerprint; all keys under
`namespace`), so two tenants never share a flight, its answer or its error:

1. ``GET result:k``: a result stored in the last `result_ttl_s` seconds is served (a late subscriber must
   not miss the answer it was waiting for);
2. ``SET lock:k <token> NX PX lock_ttl``: the one process that wins is the *leader*. It calls upstream
   (refreshing its lock while it waits, so a slow answer does not lose it), then in one Lua script stores
   the result under a short TTL, ``PUBLISH``es it on ``done:k`` and releases the lock if it still holds it;
3. everybody else is a *follower*: the same script that failed to take the lock returns the leader's token,
   so the follower knows which flight it joined. It ``SUBSCRIBE``s to ``done:k``, checks ``result:k`` and
   that flight's ``error:k:<token>`` once more (the answer may have been published before it subscribed),
   and waits for the message. If the lock disappears
   without a result (the leader died, its lock expired, or it was cancelled) a follower starts over, and one
   of them becomes the next leader.

Results travel as JSON (`ChatCompletion.model_dump`), never pickle: a shared Redis must not be able to run
code in every worker. An upstream error is published to the waiting followers (they raise `UpstreamError`)
and kept only under its flight's token, for the followers that joined that flight but subscribed late; it is
never stored as the key's result, so the next request goes upstream again. Streams and
`SamplingPolicy.keep(n>1)` requests pass through untouched; put the in-process `SingleFlight` in front so one
process holds at most one Redis wait per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import Callable
from typing import Any

import orjson
from openai.types.chat import ChatCompletion
from redis.asyncio import Redis

from labkit.chain import Handler, Result
from labkit.dedup.policy import SamplingPolicy
from labkit.request import ChatRequest
from labkit.scope import Scoping, mark_served, served_model
from labkit.stream import ChunkStream

# KEYS: lock. ARGV: token, ttl (ms). Returns {1, token} to the new leader, else {0, the leader's token}.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, ARGV[1]} end
return {0, redis.call('GET', KEYS[1])}
"""

# KEYS: lock, result (or this flight's error key). ARGV: token, payload, ttl (ms), channel, store (1/0)
_FINISH = """
if ARGV[5] == '1' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
redis.call('PUBLISH', ARGV[4], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: lock. ARGV: token, ttl (ms)
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RETRY = orjson.dumps({"retry": True})


class UpstreamError(RuntimeError):
    """The leader's upstream call failed; followers in other processes raise this copy of its error."""

    def __init__(
        self, message: str, *, type_name: str, status_code: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.status_code = status_code
        self.code = code


def encode_result(completion: ChatCompletion) -> bytes:
    document: dict[str, Any] = {"result": completion.model_dump(mode="json")}
    if (served := served_model(completion)) is not None:  # a fallback's answer says which model served it
        document["served_model"] = served
    return orjson.dumps(document)


def encode_error(error: BaseException) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "type": type(error).__name__,
                "message": str(error),
                "status_code": getattr(error, "status_code", None),
                "code": getattr(error, "code", None),
            }
        }
    )


def decode(payload: bytes) -> ChatCompletion | None:
    """The completion in a payload; raises `UpstreamError` for an error, returns None for "start over"."""
    document: dict[str, Any] = orjson.loads(payload)
    if "result" in document:
        completion = ChatCompletion.model_validate(document["result"])
        if isinstance(served := document.get("served_model"), str):
            mark_served(completion, served)
        return completion
    if "error" in document:
        error = document["error"]
        raise UpstreamError(
            error.get("message", ""),
            type_name=error.get("type", "Error"),
            status_code=error.get("status_code"),
            code=error.get("code"),
        )
    return None


@dataclasses.dataclass
class RedisFlightStats:
    """`upstream_calls` (led) + `coalesced` (got the published answer) + `late_hits` (got the stored one)."""

    requests: int = 0
    upstream_calls: int = 0
    coalesced: int = 0
    late_hits: int = 0
    restarts: int = 0
    bypassed: int = 0
    upstream_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class RedisSingleFlight:
    """Coalesce identical plain requests of one scope across processes that share one Redis.

    `scoping` gives each request its tenant (default: from the request's controls, else "public"); `key`
    replaces the scope rule with another one that must still separate tenants.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        policy: SamplingPolicy | None = None,
        key: Callable[[ChatRequest], str] | None = None,
        scoping: Scoping | None = None,
        namespace: str = "labkit:sf",
        lock_ttl_s: float = 10.0,
        result_ttl_s: float = 5.0,
        wait_timeout_s: float = 120.0,
        poll_s: float = 0.25,
    ) -> None:
        self.redis = redis
        self.policy = policy or SamplingPolicy()
        self.scoping = scoping if scoping is not None else Scoping()
        self.key: Callable[[ChatRequest], str] = key if key is not None else self.scope_key
        self.namespace = namespace
        self.lock_ttl_ms = max(1, int(lock_ttl_s * 1000))
        self.result_ttl_ms = max(1, int(result_ttl_s * 1000))
        self.wait_timeout_s = wait_timeout_s
        self.poll_s = poll_s
        self.stats = RedisFlightStats()
        self._acquire = redis.register_script(_ACQUIRE)
        self._finish = redis.register_script(_FINISH)
        self._refresh = redis.register_script(_REFRESH)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisSingleFlight:
        return cls(Redis.from_url(url), **options)

    async def aclose(self) -> None:
        await self.redis.aclose()

    def scope_key(self, request: ChatRequest) -> str:
        """The request's scope (`labkit.scope.Scope`) as a key: namespace, tenant, model and fingerprint."""
        return self.scoping.of(request).key("f")

    def names(self, key: str) -> tuple[str, str, str]:
        """The lock key, the result key and the channel of one fingerprint."""
        return f"{self.namespace}:lock:{key}", f"{self.namespace}:result:{key}", f"{self.namespace}:done:{key}"

    def error_key(self, result_key: str, token: str) -> str:
        """Where one flight's error waits for its late followers (never read by a new request)."""
        return f"{result_key}:error:{token}"

    async def __call__(self, request: ChatRequest, call_next: Handler) -> Result:
        self.stats.requests += 1
        if request.stream or self.policy.slots(request) != 1:
            self.stats.bypassed += 1
            return await call_next(request)
        lock, result_key, channel = self.names(self.key(request))
        deadline = asyncio.get_running_loop().time() + self.wait_timeout_s
        while True:
            stored = await self.redis.get(result_key)
            if stored is not None and (completion := decode(stored)) is not None:
                self.stats.late_hits += 1
                return completion
            token = secrets.token_hex(8)
            led, holder = await self._acquire(keys=[lock], args=[token, self.lock_ttl_ms])
            if led:
                self.stats.upstream_calls += 1
                return await self._lead(request, call_next, lock, result_key, channel, token)
            if holder is None:  # the leader finished between SET and GET: look again
                self.stats.restarts += 1
                continue
            error_key = self.error_key(result_key, holder.decode() if isinstance(holder, bytes) else holder)
            completion = await self._follow(lock, result_key, error_key, channel, deadline)
            if completion is not None:
                return completion
            self.stats.restarts += 1

    async def _lead(
        self, request: ChatRequest, call_next: Handler, lock: str, result_key: str, channel: str, token: str
    ) -> ChatCompletion:
        keeper = asyncio.create_task(self._keep_lock(lock, token))
        try:
            result = await call_next(request)
            if isinstance(result, ChunkStream):
                result = await result.collect()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # let a follower take over at once
                await self._finish(keys=[lock, result_key], args=[token, _RETRY, self.result_ttl_ms, channel, 0])
            raise
        except Exception as error:
            self.stats.upstream_errors += 1
            error_key = self.error_key(result_key, token)
            await self._finish(
                keys=[lock, error_key], args=[token, encode_error(error), self.result_ttl_ms, channel, 1]
            )
            raise
        finally:
            keeper.cancel()
        await self._finish(keys=[lock, result_key], args=[token, encode_result(result), self.result_ttl_ms, channel, 1])
        return result

    async def _keep_lock(self, lock: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl_ms / 3000)
            if not await self._refresh(keys=[lock], args=[token, self.lock_ttl_ms]):
                return

    async def _follow(
        self, lock: str, result_key: str, error_key: str, channel: str, deadline: float
    ) -> ChatCompletion | None:
        """Wait for the leader's message; None means the leader is gone and the caller should start over."""
        loop = asyncio.get_running_loop()
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            for stored in await self.redis.mget(result_key, error_key):  # published before we subscribed?
                if stored is not None:
                    completion = decode(stored)  # raises the flight's error
                    if completion is not None:
                        self.stats.late_hits += 1
                    return completion
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.poll_s)
                if message is None and not await self.redis.exists(lock):
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
                    if message is None:
                        if (error := await self.redis.get(error_key)) is not None:
                            return decode(error)
                        return None
                if message is not None:
                    completion = decode(message["data"])
                    if completion is not None:
                        self.stats.coalesced += 1
                    return completion
                if loop.time() > deadline:
                    raise TimeoutError(f"no answer for {channel} after {self.wait_timeout_s:g} s")


__all__ = ["RedisFlightStats", "RedisSingleFlight", "UpstreamError", "decode", "encode_error", "encode_result"]
