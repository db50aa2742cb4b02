"""The simulated service as the lab runs it: started as a child process, driven through its admin API.

`start_sim` starts ``python -m labkit.sim`` on a free loopback port and waits for its ready line;
`start_h2_front` puts an HTTP/2 front (``python -m labkit.sim.h2``) before one. `SimService` is what a notebook
holds: the URLs, an :class:`~labkit.endpoint.Endpoint`, and helpers for the fault, limit, stats and reset
endpoints (synchronous for a cell, ``a``-prefixed twins for code on the event loop).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from labkit.endpoint import LOCAL_API_KEY, Endpoint
from labkit.lab.processes import LOOPBACK, Child, Service, ServiceError, child_env

if TYPE_CHECKING:
    from labkit.transports.tls import SelfSignedCert

SIM_API_KEY = LOCAL_API_KEY
"""The placeholder key for the simulated service, which needs a key but has no secrets to guard."""

READY_LINE = re.compile(r"labkit\.sim ready on (https?://\S+)")
H2_MAX_STREAMS = 1000  # the front's streams per connection: hypercorn's default of 100 would cap the lesson's runs


@dataclass(eq=False, repr=False)
class SimService(Service):
    """A simulated OpenAI-compatible service, with helpers for its admin endpoints.

    ``url`` is the server's root (``/health``, ``/admin/...``); ``base_url`` is what the OpenAI SDK takes.
    """

    profile: str = ""
    seed: int = 0
    api_key: str = field(default=SIM_API_KEY, repr=False)
    ca_file: str | None = None
    """For a sim serving HTTPS with a self-signed certificate (``tls_cert=``): the certificate to trust."""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def endpoint(self) -> Endpoint:
        """This service as an :class:`~labkit.endpoint.Endpoint`, for the transport and the balancer."""
        return Endpoint(self.base_url, self.api_key, name=self.name, simulated=self.managed)

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
    return launch_sim(profile, seed, rpm=rpm, tpm=tpm, faults=faults, args=args, timeout=timeout, **options)()


def launch_sim(
    profile: str,
    seed: int,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    faults: Mapping[str, Any] | None = None,
    args: Sequence[str] = (),
    timeout: float = 30.0,
    **options: Any,
) -> PendingSim:
    """Spawn a sim without waiting for it, so a lab with several sims pays their start-up time once."""
    argv = [*_sim_command(), "--host", LOOPBACK, "--port", "0"]
    argv += ["--profile", profile, "--seed", str(seed)]
    argv += _cli_options({"rpm": rpm, "tpm": tpm, "faults": faults, **options})
    argv += ["--parent-pid", str(os.getpid()), *args]
    child = Child(f"labkit.sim ({profile})", argv, env=child_env())
    flags = list(args)
    ca_file = options.get("tls_cert") or next((b for a, b in itertools.pairwise(flags) if a == "--tls-cert"), None)
    return PendingSim(child, profile, seed, timeout, str(ca_file) if ca_file else None)


@dataclass
class PendingSim:
    child: Child
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
        match = READY_LINE.search(self.child.stdout.tail(lines=50))
        return match.group(1).rstrip("/") if match else None


def start_h2_front(
    sim: SimService,
    cert: SelfSignedCert | None = None,
    *,
    max_streams: int = H2_MAX_STREAMS,
    timeout: float = 30.0,
) -> SimService:
    """Start an HTTP/2 front for `sim` (HTTPS with ALPN when `cert` is given, else h2c with prior knowledge).

    Returns a `SimService` whose URL is the front's: its admin helpers go through the front too, and
    `stats()["front"]` has the client-side connection counts. Stop it before the sim.
    """
    if sim.url.startswith("https://"):
        raise ValueError("start the sim behind the front without TLS: the front terminates TLS itself")
    argv = [sys.executable, "-m", "labkit.sim.h2", "--upstream", sim.url, "--port", "0"]
    argv += ["--max-streams", str(max_streams), "--parent-pid", str(os.getpid())]
    if cert is not None:
        argv += ["--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)]
    child = Child("labkit.sim.h2 front", argv, env=child_env())
    pending = PendingSim(child, sim.profile, sim.seed, timeout, str(cert.cert_path) if cert else None)
    service = pending()
    service.name = f"h2 front of {sim.name}"
    return service


__all__ = ["SIM_API_KEY", "PendingSim", "SimService", "launch_sim", "start_h2_front", "start_sim"]
