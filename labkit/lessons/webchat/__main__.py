"""Command line: `python -m labkit.lessons.webchat --port 0 --upstream http://127.0.0.1:PORT/v1`.

Serves the ASGI app (`labkit.lessons.webchat.app.create_app`) with uvicorn on this process's event loop.

Prints one line, `labkit.lessons.webchat ready on http://HOST:PORT`, once it listens; exits on SIGTERM/SIGINT, and
with --parent-pid when that process is gone (so a crashed notebook kernel leaves no orphan server).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from labkit.endpoint import LOCAL_API_KEY
from labkit.lessons.webchat.app import create_app, serve
from labkit.lifecycle import serve_until_stopped

READY_PREFIX = "labkit.lessons.webchat ready on "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m labkit.lessons.webchat", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: let the OS choose (printed on the ready line)")
    ap.add_argument(
        "--upstream",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="base URL of the OpenAI-compatible service, ending in /v1 (default: $OPENAI_BASE_URL)",
    )
    ap.add_argument("--model", default="gpt-4o")
    ap.add_argument("--max-tokens", type=int, default=400, help="default cap on an answer's length")
    ap.add_argument("--first-token-timeout", type=float, default=30.0, help="seconds (0: none)")
    ap.add_argument("--total-timeout", type=float, default=300.0, help="seconds for a whole answer (0: none)")
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = ap.parse_args(argv)
    if not args.upstream:
        ap.error("--upstream (or OPENAI_BASE_URL) is required")
    return args


async def _main(args: argparse.Namespace) -> None:
    app = create_app(
        args.upstream,
        api_key=os.environ.get("OPENAI_API_KEY") or LOCAL_API_KEY,  # from the environment: argv shows in `ps`
        model=args.model,
        max_tokens=args.max_tokens,
        first_token_timeout_s=args.first_token_timeout or None,
        total_timeout_s=args.total_timeout or None,
    )
    server, port = await serve(app, args.host, args.port)  # uvicorn, on this process's loop
    host = f"[{args.host}]" if ":" in args.host else args.host
    await serve_until_stopped(f"{READY_PREFIX}http://{host}:{port}", server.stop, args.parent_pid)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_main(parse_args(argv)))


if __name__ == "__main__":
    main()
