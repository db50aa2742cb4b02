"""An HTTP/2 front for the simulated service, so the pooling lesson can measure HTTP/2 against HTTP/1.1.

Why a front and not HTTP/2 in the sim itself: the sim runs on `aiohttp.web`, which speaks HTTP/1.1 only
(and was chosen because it serves a thousand streams with half the added latency of the alternatives).
Rewriting its routes for a second server would fork the behaviour the lessons rely on (latency model, faults,
rate limits, SSE framing). Instead this module runs `hypercorn` (an ASGI server that speaks
HTTP/1.1 and HTTP/2, over TLS with ALPN or in cleartext with prior knowledge, "h2c") in its own process, in
front of one unchanged sim. Every request, whichever protocol it arrived on, is forwarded as it is (method,
path, headers, body) over a pool of keep-alive HTTP/1.1 connections on loopback, and the answer streams back
chunk by chunk as the sim writes it; a client that goes away cancels the upstream request, and an upstream
connection dropped mid-stream resets the client's stream. So a lesson compares HTTP/1.1 and HTTP/2 *through
the same front*: both pay the same extra loopback hop (a fraction of a millisecond), and what differs is the
protocol between the client and the front, which is what HTTP/2 changes.

The sim behind the front sees the front's few pooled connections, not the clients'. So `GET /admin/stats`
through the front answers the sim's counters plus a `front` object with what the clients did: connections
opened (distinct client sockets that carried a `/v1/` request), connections open now, and requests by HTTP version.

Run it as `python -m labkit.sim.h2 --upstream http://127.0.0.1:PORT [--tls-cert C --tls-key K]`; it prints
`labkit.sim ready on https://HOST:PORT` like the sim. `labkit.lab.simservice.start_h2_front(sim, cert)` does that
from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from labkit.sim import READY_PREFIX

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 §7.6.1) are about one connection and are never forwarded; HTTP/2 forbids them.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "host"}
)
DEFAULT_MAX_STREAMS = 1000  # hypercorn's default of 100 streams per connection would cap the lesson's runs


class FrontStats:
    """What the clients did at the front: the counters the sim cannot see behind it."""

    def __init__(self, listen_port: int = 0) -> None:
        self.listen_port = listen_port
        self.clients: set[tuple[str, int]] = set()
        self.by_version: Counter[str] = Counter()
        self.requests = 0

    def saw(self, scope: Scope) -> None:
        if not scope["path"].startswith("/v1/"):
            return  # health and admin calls are not traffic, as in the sim's own counters
        client = scope.get("client")
        if client:
            self.clients.add((client[0], client[1]))
        self.by_version[str(scope.get("http_version", "?"))] += 1
        self.requests += 1

    def reset(self) -> None:
        self.clients.clear()
        self.by_version.clear()
        self.requests = 0

    def connections_open(self) -> int | None:
        """Established client connections to the listen port now (psutil), or None if it cannot tell."""
        try:
            import psutil

            conns = psutil.Process().net_connections(kind="tcp")
        except Exception:
            return None
        return sum(1 for c in conns if c.laddr and c.laddr.port == self.listen_port and c.status == "ESTABLISHED")

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections_opened": len(self.clients),
            "connections_open": self.connections_open(),
            "requests": self.requests,
            "requests_by_http_version": dict(sorted(self.by_version.items())),
        }


class H2Front:
    """The ASGI application: forward every request to the sim, stream the answer back."""

    def __init__(self, upstream: str, stats: FrontStats | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.stats = stats or FrontStats()
        self._session: Any = None

    async def _start(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=120, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self._session is None:
            await self._start()
        self.stats.saw(scope)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        forward = asyncio.ensure_future(self._forward(scope, bytes(body), send))
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({forward, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (forward, gone):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        if forward in done:
            forward.result()  # an upstream failure mid-stream propagates: hypercorn resets the client's stream

    async def _forward(self, scope: Scope, body: bytes, send: Send) -> None:
        path = scope.get("raw_path") or scope["path"].encode()
        url = self.upstream + path.decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP and not k.startswith(":")]
        async with self._session.request(scope["method"], url, headers=headers, data=body or None) as resp:
            if scope["path"] == "/admin/stats" and resp.status == 200:
                data = orjson.loads(await resp.read())
                data["front"] = self.stats.snapshot()
                payload = orjson.dumps(data)
                await send({"type": "http.response.start", "status": 200, "headers": _json_headers(len(payload))})
                await send({"type": "http.response.body", "body": payload})
                return
            if scope["path"] == "/admin/reset" and resp.status == 200:
                self.stats.reset()
            out = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in resp.headers.items()
                if k.lower() not in _HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for data in resp.content.iter_any():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m labkit.sim.h2", description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="the sim's root URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: let the OS choose (printed on the ready line)")
    ap.add_argument("--tls-cert", default=None, help="serve HTTPS (ALPN h2 and http/1.1) with this certificate")
    ap.add_argument("--tls-key", default=None, help="the private key of --tls-cert")
    ap.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS, help="concurrent streams per connection")
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    return ap.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from labkit.lifecycle import watch_parent

    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.backlog = 4096
    config.accesslog = None
    config.include_server_header = False
    config.h2_max_concurrent_streams = args.max_streams
    config.keep_alive_max_requests = 2**31  # hypercorn closes an HTTP/1.1 connection after 1000 by default
    config.keep_alive_timeout = 120
    if args.tls_cert:
        config.certfile, config.keyfile = args.tls_cert, args.tls_key
    app = H2Front(args.upstream, FrontStats(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(watch_parent(args.parent_pid, stop)) if args.parent_pid else None
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    await _wait_listening(args.host, port, server)
    host = f"[{args.host}]" if ":" in args.host else args.host
    sys.stdout.write(f"{READY_PREFIX}{'https' if args.tls_cert else 'http'}://{host}:{port}\n")
    sys.stdout.flush()
    try:
        await server
    finally:
        if watcher is not None:
            watcher.cancel()
        sock.close()


async def _wait_listening(host: str, port: int, server: asyncio.Task[None]) -> None:
    for _ in range(500):
        if server.done():
            server.result()
            raise RuntimeError("hypercorn stopped before it listened")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.01)
    raise RuntimeError("hypercorn did not listen within 5 s")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.exit("python -m labkit.sim.h2: error: --tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path and not os.path.isfile(path):
            sys.exit(f"python -m labkit.sim.h2: error: no such file: {path}")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))


if __name__ == "__main__":
    main()
