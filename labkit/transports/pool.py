"""One shared HTTP client per endpoint and event loop: the connection pool every layer of labkit draws from.

A client per request pays a new TCP (and TLS) handshake every time and leaves sockets in TIME_WAIT; one
client shared by everything keeps a bounded pool of keep-alive connections instead. Clients are bound to the
event loop they were made on (their connections and locks belong to it), so the pool keys them by endpoint
*and* loop: a notebook's loop and a worker thread's loop each get their own, never one another's.

The limits come from one `PoolConfig` (or a plain mapping, e.g. a section of a config file). It also
refuses the common advice's mistake at construction: `http2=True` needs the `h2` package (httpx raises an
`ImportError` only when the client is built) and a server that speaks HTTP/2; over `http://` httpx will only
use it with prior knowledge (`http1=False`), otherwise it silently sends HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import ssl
import weakref
from collections.abc import Mapping
from typing import Any, Literal

import httpx2
from openai import AsyncOpenAI, DefaultAioHttpClient, DefaultAsyncHttpxClient

from labkit.endpoint import Endpoint

__all__ = ["ClientPool", "PoolConfig", "PoolConfigError", "shared_pool"]

ClientKind = Literal["httpx", "aiohttp"]
"""The HTTP client under the SDK: `"httpx"` is its default (openai 3.x ships `httpx2`, a fork of httpx, as its
transport), `"aiohttp"` its `DefaultAioHttpClient`."""


class PoolConfigError(ValueError):
    """A pool setting that cannot work; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Limits and protocol of the shared clients.

    `max_connections` caps connections per client (per endpoint and loop); requests beyond it wait up to
    `pool_timeout` seconds for a free one, then fail with `httpx2.PoolTimeout` (the SDK raises it as
    `openai.APITimeoutError`). `max_keepalive` idle connections are kept for `keepalive_expiry` seconds
    (0: no keep-alive, a new connection for every request).
    `client` picks the HTTP client under the SDK: `"httpx"` (its default) or `"aiohttp"`
    (`openai.DefaultAioHttpClient`, which has no HTTP/2). `ca_file` trusts an extra certificate (the lab's
    self-signed one) with full verification.
    """

    client: ClientKind = "httpx"
    max_connections: int | None = 100
    max_keepalive: int | None = 20
    keepalive_expiry: float | None = 5.0
    http2: bool = False
    http1: bool = True
    timeout: float = 60.0
    connect_timeout: float = 5.0
    pool_timeout: float | None = None
    ca_file: str | None = None
    max_retries: int = 0

    def __post_init__(self) -> None:
        if self.client not in ("httpx", "aiohttp"):
            raise PoolConfigError(f"client must be 'httpx' or 'aiohttp', got {self.client!r}")
        for name, least in (("max_connections", 1), ("max_keepalive", 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise PoolConfigError(f"{name} must be an integer >= {least} or None (no limit), got {value!r}")
        for name in ("keepalive_expiry", "pool_timeout"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise PoolConfigError(f"{name} must be >= 0 seconds or None, got {value!r}")
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise PoolConfigError("timeout and connect_timeout must be > 0 seconds")
        if self.max_retries < 0:
            raise PoolConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if not (self.http1 or self.http2):
            raise PoolConfigError("at least one of http1 and http2 must be on")
        if self.http2 and self.client == "aiohttp":
            raise PoolConfigError("aiohttp speaks HTTP/1.1 only: use client='httpx' for http2=True")
        if self.http2 and importlib.util.find_spec("h2") is None:
            raise PoolConfigError(
                "http2=True needs the `h2` package (pip install 'httpx[http2]'); without it httpx refuses to "
                "build the client, and the server must speak HTTP/2 too (ALPN over TLS, or h2c)"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PoolConfig:
        """From a config section; unknown keys are an error (a typo must not silently keep a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PoolConfigError(f"unknown pool setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def limits(self) -> httpx2.Limits:
        return httpx2.Limits(
            max_connections=self.max_connections,
            max_keepalive_connections=self.max_keepalive,
            keepalive_expiry=self.keepalive_expiry,
        )

    def httpx_timeout(self) -> httpx2.Timeout:
        return httpx2.Timeout(self.timeout, connect=self.connect_timeout, pool=self.pool_timeout)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What to verify servers with: the system's CAs, plus `ca_file` when set."""
        if self.ca_file is None:
            return True
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=self.ca_file)
        return context


@dataclasses.dataclass
class _Entry:
    openai: AsyncOpenAI | None = None
    session: Any = None  # aiohttp.ClientSession for the lean transport


class ClientPool:
    """Shared clients keyed by (endpoint, running event loop). Close it once, at the end: `await pool.aclose()`."""

    def __init__(self, config: PoolConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = PoolConfig()
        elif not isinstance(config, PoolConfig):
            config = PoolConfig.from_mapping(config)
        self.config = config
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Entry]] = (
            weakref.WeakKeyDictionary()
        )
        self._ssl: ssl.SSLContext | bool | None = None

    def _entry(self, endpoint: Endpoint) -> _Entry:
        loop = asyncio.get_running_loop()  # clients belong to a loop: refuse to make one outside it
        per_loop = self._loops.get(loop)
        if per_loop is None:
            per_loop = self._loops[loop] = {}
        key = (endpoint.base_url, endpoint.api_key)
        entry = per_loop.get(key)  # every request asks: no `setdefault`, which builds a new `_Entry` each time
        if entry is None:
            entry = per_loop[key] = _Entry()
        return entry

    def _verify(self) -> ssl.SSLContext | bool:
        if self._ssl is None:
            self._ssl = self.config.ssl_context()
        return self._ssl

    def http_client(self) -> httpx2.AsyncClient:
        """A new HTTP client for the SDK with the pool's limits (the pool owns the ones it hands to the SDK)."""
        c = self.config
        kwargs: dict[str, Any] = {"limits": c.limits(), "timeout": c.httpx_timeout(), "verify": self._verify()}
        if c.client == "aiohttp":
            return DefaultAioHttpClient(**kwargs)
        return DefaultAsyncHttpxClient(**kwargs, http2=c.http2, http1=c.http1)

    def openai(self, endpoint: Endpoint) -> AsyncOpenAI:
        """The shared `AsyncOpenAI` for this endpoint on the running loop (made on first use)."""
        entry = self._entry(endpoint)
        if entry.openai is None:
            c = self.config
            entry.openai = AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key,
                max_retries=c.max_retries,
                timeout=c.httpx_timeout(),
                http_client=self.http_client(),
            )
        return entry.openai

    def session(self, endpoint: Endpoint) -> Any:
        """The shared `aiohttp.ClientSession` for this endpoint on the running loop (the lean transport's)."""
        import aiohttp

        entry = self._entry(endpoint)
        if entry.session is None or entry.session.closed:
            c = self.config
            entry.session = aiohttp.ClientSession(
                connector=self._connector(),
                timeout=aiohttp.ClientTimeout(total=c.timeout, sock_connect=c.connect_timeout),
            )
        return entry.session

    def _connector(self) -> Any:
        import aiohttp

        c = self.config
        return aiohttp.TCPConnector(
            limit=c.max_connections or 0,
            limit_per_host=0,
            keepalive_timeout=c.keepalive_expiry if c.keepalive_expiry else 5.0,
            force_close=c.max_keepalive == 0,
            ssl=self._verify(),
        )

    def clients(self) -> int:
        """How many shared clients are open on the running loop (for tests and the lesson's tables)."""
        per_loop = self._loops.get(asyncio.get_running_loop(), {})
        return sum((e.openai is not None) + (e.session is not None and not e.session.closed) for e in per_loop.values())

    async def aclose(self) -> None:
        """Close every client made on the running loop (clients of other loops must be closed on theirs)."""
        per_loop = self._loops.pop(asyncio.get_running_loop(), {})
        for entry in per_loop.values():
            if entry.openai is not None:
                await entry.openai.close()
            if entry.session is not None and not entry.session.closed:
                await entry.session.close()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_SHARED: ClientPool | None = None


def shared_pool(config: PoolConfig | Mapping[str, Any] | None = None) -> ClientPool:
    """The process-wide pool (made with `config` on first use; a different config later is an error)."""
    global _SHARED
    wanted = None if config is None else config if isinstance(config, PoolConfig) else PoolConfig.from_mapping(config)
    if _SHARED is None:
        _SHARED = ClientPool(wanted)
    elif wanted is not None and wanted != _SHARED.config:
        raise PoolConfigError("the shared pool already exists with another config; make a ClientPool of your own")
    return _SHARED
