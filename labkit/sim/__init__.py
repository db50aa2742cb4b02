"""labkit.sim: a simulated OpenAI-compatible service that behaves like a real inference server.

Run it as its own process (`python -m labkit.sim --profile gpt-4o-class --port 0`) so its CPU does not
distort what a notebook measures; `create_app` and `serve` are for embedding it in tests.
"""

from __future__ import annotations

import ssl

from aiohttp import web

from labkit.sim.app import create_app
from labkit.sim.config import Profile, SimConfig, load_profile, load_profiles
from labkit.sim.state import STATE, SimState

LISTEN_BACKLOG = 4096  # aiohttp's default of 128 drops connections when thousands of clients connect at once
READY_PREFIX = "labkit.sim ready on "


async def serve(
    config: SimConfig, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Start the service on the running loop; returns the runner (call `cleanup()` to stop) and the port.

    With `ssl_context` it serves HTTPS (the pooling lesson's TLS handshakes)."""
    runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    server = site._server  # the asyncio Server: the only place the OS-chosen port is exposed
    assert server is not None and server.sockets
    return runner, server.sockets[0].getsockname()[1]


__all__ = [
    "LISTEN_BACKLOG",
    "READY_PREFIX",
    "STATE",
    "Profile",
    "SimConfig",
    "SimState",
    "create_app",
    "load_profile",
    "load_profiles",
    "serve",
]
