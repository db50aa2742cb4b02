"""Command line: run one simulator instance as its own process.

Prints exactly one line, `labkit.sim ready on http://HOST:PORT` (`https://` with --tls-cert/--tls-key), once
it listens (labkit.lab.services waits for it), exits on SIGTERM/SIGINT, and with --parent-pid exits when that
process is gone, so a crashed notebook kernel leaves no orphan servers behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import ssl
import sys
from pathlib import Path
from typing import Any

from labkit.lifecycle import serve_until_stopped
from labkit.sim import READY_PREFIX, SimConfig, load_profile, serve
from labkit.sim.faults import FaultConfigError, validate


def _faults_arg(value: str) -> dict[str, Any]:
    """--faults takes inline JSON or a path to a JSON file."""
    text = value
    if not value.lstrip().startswith("{"):
        text = Path(value).read_text(encoding="utf-8")
    try:
        cfg = json.loads(text)
        validate(cfg)
    except (json.JSONDecodeError, FaultConfigError) as e:
        raise argparse.ArgumentTypeError(f"invalid fault config: {e}") from None
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m labkit.sim", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: let the OS choose (printed on the ready line)")
    ap.add_argument("--profile", default="gpt-4o-class", help="a profile of data/profiles.json")
    ap.add_argument("--profiles", type=Path, default=None, help="another profiles file")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rpm", type=int, default=None, help="requests per minute per API key")
    ap.add_argument("--tpm", type=int, default=None, help="tokens per minute per API key")
    ap.add_argument("--ttft", type=float, default=None, help="override the profile's base TTFT (s)")
    ap.add_argument("--tps", type=float, default=None, help="override the profile's output tokens/s per stream")
    ap.add_argument("--max-sequences", type=int, default=None, help="override concurrent sequences")
    ap.add_argument("--api-key", action="append", default=None, help="accept only these keys (repeatable)")
    ap.add_argument("--faults", type=_faults_arg, default=None, help="initial fault config: JSON or a path")
    ap.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    ap.add_argument(
        "--tls-cert", type=Path, default=None, help="serve HTTPS with this PEM certificate (labkit.transports.tls)"
    )
    ap.add_argument("--tls-key", type=Path, default=None, help="the PEM private key of --tls-cert")
    ap.add_argument(
        "--no-admin", action="store_true", help="serve no /admin routes, like a real provider (faults, limits, stats)"
    )
    return ap.parse_args(argv)


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A server TLS context from --tls-cert/--tls-key (aiohttp speaks HTTP/1.1 only, so ALPN offers only that)."""
    if args.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(args.tls_cert), str(args.tls_key))
    context.set_alpn_protocols(["http/1.1"])
    return context


async def _main(args: argparse.Namespace) -> None:
    config = SimConfig(
        profile=args.profile,
        seed=args.seed,
        rpm=args.rpm,
        tpm=args.tpm,
        api_keys=frozenset(args.api_key) if args.api_key else None,
        faults=args.faults,
        ttft_s=args.ttft,
        tps=args.tps,
        max_sequences=args.max_sequences,
        max_body_bytes=args.max_body_bytes,
        profiles_path=args.profiles,
        admin_routes=not args.no_admin,
    )
    runner, port = await serve(config, args.host, args.port, ssl_context=_ssl_context(args))
    _freeze_startup_objects()
    host = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if args.tls_cert else "http"
    await serve_until_stopped(f"{READY_PREFIX}{scheme}://{host}:{port}", runner.cleanup, args.parent_pid)


def _freeze_startup_objects() -> None:
    """Move what startup built (the answer corpus and its token pools: tens of thousands of objects) out of the
    garbage collector's reach. Otherwise the first full collection under load scans them all and stalls every
    stream at once (measured here: about 80 ms added to every first token of a 100-stream burst). The youngest
    generation is collected every 50,000 allocations rather than 700: a burst of streams allocates fast, and fewer,
    larger collections cost less in total (at 1000 streams the added TTFT p95 fell from a median of 295 ms to
    266 ms over three runs each of `python -m labkit.lessons.bench`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _raise_open_files_limit() -> None:
    """One socket per connection: lift the soft open-files limit (often 1024) to the hard one for 2000+ streams."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        sys.exit("python -m labkit.sim: error: --tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            sys.exit(f"python -m labkit.sim: error: no such file: {path}")
    try:
        load_profile(args.profile, args.profiles)
    except (KeyError, OSError, ValueError) as e:
        sys.exit(f"python -m labkit.sim: error: {e}")
    _raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))


if __name__ == "__main__":
    main()
