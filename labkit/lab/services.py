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

The servers themselves are started by `labkit.lab.processes` (child-process supervision),
`labkit.lab.simservice` (the simulated service and its HTTP/2 front) and `labkit.lab.datastores` (Redis and
Memcached); their public names are importable from here too.
"""

from __future__ import annotations

import html
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from labkit.endpoint import Endpoint
from labkit.lab.datastores import MemcachedService, RedisService, start_memcached, start_redis
from labkit.lab.processes import Service, ServiceError, Stoppable
from labkit.lab.simservice import SIM_API_KEY, PendingSim, SimService, launch_sim, start_h2_front, start_sim

__all__ = [
    "SIM_API_KEY",
    "Lab",
    "MemcachedService",
    "RedisService",
    "Service",
    "ServiceError",
    "SimService",
    "start_h2_front",
    "start_lab",
    "start_memcached",
    "start_redis",
    "start_sim",
]


Wanted = bool | Literal["optional"]
_S = TypeVar("_S", bound=Service)
SimSpec = str | Mapping[str, Any]


@dataclass(eq=False)
class Lab(Stoppable):
    """The servers a notebook uses, and where its client should send requests."""

    base_url: str
    api_key: str = field(repr=False)
    sims: tuple[SimService, ...] = ()
    redis: RedisService | None = None
    memcached: MemcachedService | None = None

    @property
    def simulated(self) -> bool:
        """True when this lab started the simulated service its requests go to, so the service's admin routes
        (faults, limits, counters) are there. Decided by what the lab started, never by the API key: a server
        the lab did not start (``OPENAI_BASE_URL``) is treated as real even when it is labkit's own."""
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
    pending: list[PendingSim] = []
    try:
        remote = os.environ.get("OPENAI_BASE_URL")
        if not remote:
            for i, spec in enumerate(sims):
                kwargs = {"profile": spec} if isinstance(spec, str) else dict(spec)
                kwargs.setdefault("seed", seed + i)
                kwargs.setdefault("timeout", timeout)
                pending.append(launch_sim(**kwargs))
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
