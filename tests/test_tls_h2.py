"""labkit.transports.tls and labkit.sim.h2: the sim over HTTPS with the lab's own certificate, HTTP/2 via a front."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Iterator

import httpx2
import pytest

from labkit.lab.services import SimService, start_h2_front, start_sim
from labkit.transports.tls import SelfSignedCert, TLSError, available_backends, make_self_signed

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
HEADERS = {"Authorization": "Bearer sk-lab-local"}


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> SelfSignedCert:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_sim(cert) -> Iterator[SimService]:
    with start_sim("fast", tls_cert=str(cert.cert_path), tls_key=str(cert.key_path)) as service:
        yield service


@pytest.fixture(scope="module")
def h2_front(sim, cert) -> Iterator[SimService]:
    with start_h2_front(sim, cert) as front:
        yield front


@pytest.fixture(scope="module")
def h2c_front(sim) -> Iterator[SimService]:
    with start_h2_front(sim) as front:
        yield front


async def _handshake(server: SelfSignedCert, client: SelfSignedCert, host: str = "127.0.0.1") -> bool:
    """A real TLS handshake on loopback: does `client`'s trust accept `server`'s certificate for `host`?"""
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server.server_context())
    port = listener.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(host, port, ssl=client.client_context())
    except ssl.SSLCertVerificationError:
        return False
    finally:
        listener.close()
    writer.close()
    return True


@pytest.mark.parametrize("backend", available_backends())
async def test_each_backend_makes_a_certificate_its_client_context_verifies(backend, tmp_path):
    made = make_self_signed(tmp_path / "a", backend=backend)
    other = make_self_signed(tmp_path / "b", backend=backend, key_type="rsa")
    assert (made.key_path.stat().st_mode & 0o777) == 0o600
    assert await _handshake(made, made)
    assert await _handshake(made, made, host="localhost")
    assert not await _handshake(made, other)  # trusting another certificate is not trusting this one


def test_the_sim_serves_https_and_its_admin_calls_trust_the_certificate(tls_sim, cert):
    assert tls_sim.url.startswith("https://")
    assert tls_sim.health() == {"status": "ok"}
    with httpx2.Client(verify=cert.client_context()) as client:
        response = client.post(tls_sim.base_url + "/chat/completions", json=BODY, headers=HEADERS)
    assert response.status_code == 200


def test_an_unknown_backend_is_a_clear_error(tmp_path):
    with pytest.raises(TLSError, match="backend"):
        make_self_signed(tmp_path, backend="gnutls")  # type: ignore[arg-type]


def test_no_hosts_is_a_clear_error(tmp_path):
    with pytest.raises(TLSError, match="host"):
        make_self_signed(tmp_path, hosts=())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "/nonexistent/cert.pem"], "go together"),
        (["--tls-cert", "/no/c", "--tls-key", "/no/k"], "no such"),
    ],
)
def test_the_sim_refuses_bad_tls_flags(flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "labkit.sim", "--profile", "fast", *flags], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert message in result.stderr


async def test_http2_multiplexes_concurrent_requests_on_one_connection(h2_front, cert):
    await h2_front.areset()
    async with httpx2.AsyncClient(http2=True, verify=cert.client_context()) as client:
        responses = await asyncio.gather(
            *(client.post(h2_front.base_url + "/chat/completions", json=BODY, headers=HEADERS) for _ in range(20))
        )
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert all(r.status_code == 200 for r in responses)
    front = (await h2_front.astats())["front"]
    assert front["connections_opened"] == 1
    assert front["requests_by_http_version"] == {"2": 20}


async def test_http1_needs_a_connection_per_concurrent_request(h2_front, cert):
    await h2_front.areset()
    async with httpx2.AsyncClient(verify=cert.client_context()) as client:
        await asyncio.gather(
            *(client.post(h2_front.base_url + "/chat/completions", json=BODY, headers=HEADERS) for _ in range(8))
        )
    front = (await h2_front.astats())["front"]
    assert front["connections_opened"] > 1
    assert front["requests_by_http_version"] == {"1.1": 8}


async def test_the_front_passes_errors_and_streams_through(h2_front, cert):
    async with httpx2.AsyncClient(http2=True, verify=cert.client_context()) as client:
        missing = await client.post(
            h2_front.base_url + "/chat/completions", json={**BODY, "model": "nope"}, headers=HEADERS
        )
        async with client.stream(
            "POST", h2_front.base_url + "/chat/completions", json={**BODY, "stream": True}, headers=HEADERS
        ) as streamed:
            lines = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert missing.headers["x-ratelimit-limit-requests"]
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"


async def test_h2c_needs_prior_knowledge(h2c_front):
    url = h2c_front.base_url + "/chat/completions"
    async with httpx2.AsyncClient(http1=False, http2=True) as prior:
        assert (await prior.post(url, json=BODY, headers=HEADERS)).http_version == "HTTP/2"
    async with httpx2.AsyncClient(http2=True) as hopeful:  # the common advice: silently HTTP/1.1 over http://
        assert (await hopeful.post(url, json=BODY, headers=HEADERS)).http_version == "HTTP/1.1"


async def test_http2_against_an_http1_server_silently_falls_back(tls_sim, cert):
    async with httpx2.AsyncClient(http2=True, verify=cert.client_context()) as client:
        response = await client.post(tls_sim.base_url + "/chat/completions", json=BODY, headers=HEADERS)
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"


def test_the_front_refuses_an_https_sim_behind_it(tls_sim, cert):
    with pytest.raises(ValueError, match="TLS"):
        start_h2_front(tls_sim, cert)
