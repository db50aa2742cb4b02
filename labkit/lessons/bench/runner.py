"""Orchestrates the benchmark: one simulated service, one fresh load-client process per measurement.

Streams (`sim_streams.json`): the service runs profile `bench` (time to first token 0.3 s, then 50 tokens
20 ms apart). At each concurrency level the service's counters are reset (`POST /admin/reset`), the machine
is given a moment to settle, and a new client process (`python -m labkit.lessons.bench client`) opens the N
connections, then starts all N streams at one barrier. It reports what the service added on top of the
configured latency: TTFT minus 0.3 s, and total time minus the ideal total; and, read from the service's
`/admin/stats`, its own share of the added TTFT (`srv p95`: how late it handed each first token to the socket; the
rest is the client's CPU and the network). The first content token is due at
TTFT and every further one an interval later, so the last of 50 tokens is due at `0.3 + 49 * 0.02 = 1.28 s`;
that is the ideal total (`[DONE]` follows the last token without a further wait).

SDK transports (`sdk_clients.json`): plain (non-streamed) calls at concurrency 64 against a service with
(almost) no simulated latency, so that what limits the rate is CPU: raw aiohttp, the official `AsyncOpenAI`
on its default httpx transport, and `AsyncOpenAI(http_client=DefaultAioHttpClient())`, each in a fresh
process, each after one unmeasured warm-up call per worker.

Client and server CPU are measured separately: the client reads its own `getrusage` and the server's
`psutil` CPU times at the start and the end of the measured phase. The targets of the issue are written
into the JSON with whether each was met; tests check the structure, never wall-clock thresholds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from labkit.lab.measure import raise_nofile_limit
from labkit.lessons.bench.client import PLAIN_MODES

SCHEMA_VERSION = 1
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder that holds the labkit package
DEFAULT_LEVELS = (100, 500, 1000, 2000)
QUICK_LEVELS = (50, 200)
DEFAULT_OUT = Path("build/bench")

BENCH_PROFILE = "bench"
BENCH_TTFT_S = 0.3
BENCH_ITL_S = 0.02
BENCH_TOKENS = 50
IDEAL_TOTAL_S = BENCH_TTFT_S + (BENCH_TOKENS - 1) * BENCH_ITL_S
IDEAL_TOTAL_FORMULA = "ttft + (tokens - 1) * itl = 0.3 + 49 * 0.02 = 1.28 s"

# Rate limits far above what the benchmark sends: it measures latency and CPU, not throttling.
SIM_RPM = 10_000_000
SIM_TPM = 10_000_000_000

SDK_PROFILE = "fast"
# No simulated latency for the plain calls (first token at once, 16 tokens in well under a millisecond):
# the rate is then bound by CPU, which is what the comparison is about.
SDK_SIM_OPTIONS: dict[str, Any] = {"ttft": 0.0, "tps": 100_000.0}
SDK_CONCURRENCY = 64
SDK_REQUESTS = 2000
SDK_REQUESTS_QUICK = 300
SDK_LABELS = {
    "raw_aiohttp": "raw aiohttp (lean transport)",
    "sdk_default": "AsyncOpenAI, default httpx transport",
    "sdk_aiohttp": "AsyncOpenAI(http_client=DefaultAioHttpClient())",
}
# Prototype medians on a 2-core machine (docs/ARCHITECTURE.md, "Measurements behind the design"): for
# comparison only, never asserted.
SDK_PROTOTYPE_CPU_MS = {"raw_aiohttp": 0.25, "sdk_default": 2.3, "sdk_aiohttp": 1.7}

# The targets for a 2-core machine: (concurrency, name, metric path, operator, threshold).
TARGETS: tuple[tuple[int, str, tuple[str, ...], str, float], ...] = (
    (1000, "no errors", ("errors",), "==", 0),
    (1000, "added TTFT p95 under 300 ms", ("ttft_added_ms", "p95"), "<", 300.0),
    (1000, "added total time p50 under 500 ms", ("total_added_ms", "p50"), "<", 500.0),
    (2000, "no errors", ("errors",), "==", 0),
)

QUIET_SHARE = 0.10  # other processes' share of the machine's CPU above which a run is flagged as not quiet

WARM_NOTE = (
    "connections warm: before the barrier the client opens its N connections with N concurrent GET /v1/models "
    "(unmeasured), so the measured TTFT is the server's and not a burst of N TCP handshakes; --cold measures "
    "with the handshakes included"
)


# --------------------------------------------------------------------------------------------- service


@contextlib.contextmanager
def simulated_service(profile: str, seed: int, **options: Any) -> Iterator[Any]:
    """A fresh simulated service process for the duration of the block."""
    from labkit.lab.services import start_sim

    service = start_sim(profile=profile, seed=seed, rpm=SIM_RPM, tpm=SIM_TPM, **options)
    try:
        yield service
    finally:
        service.stop()


def reset_service(service: Any) -> None:
    """Clear the service's faults, counters and rate-limit windows between levels (POST /admin/reset)."""
    service.reset()


def service_profile(service: Any) -> dict[str, Any]:
    """The latency profile in force, overrides applied (GET /admin/profile)."""
    import httpx

    response = httpx.get(
        f"{service.url}/admin/profile", headers={"Authorization": f"Bearer {service.api_key}"}, timeout=10.0
    )
    response.raise_for_status()
    return response.json()


def service_stats(service: Any) -> Any:
    """The service's counters (GET /admin/stats), or an error note: stats are informative, never fatal."""
    try:
        return service.stats()
    except Exception as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------------------------- client


def run_client(args: Sequence[str], timeout: float, api_key: str | None = None) -> dict[str, Any]:
    """Run one load-client process and return the JSON line it printed (the key goes in its environment)."""
    command = [sys.executable, "-m", "labkit.lessons.bench", "client", *args]
    env = dict(os.environ)  # this labkit importable from any working directory
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    if api_key is not None:
        env["OPENAI_API_KEY"] = api_key
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load client failed (exit {proc.returncode}): {shlex.join(command)}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def settle(seconds: float) -> None:
    """Give the machine a moment between measurements (sockets in TIME_WAIT, the server's garbage)."""
    time.sleep(seconds)


def stream_level(service: Any, concurrency: int, *, cold: bool, settle_s: float) -> dict[str, Any]:
    reset_service(service)
    settle(settle_s)
    args = [
        "--mode", "stream", "--url", str(service.base_url), "--concurrency", str(concurrency),
        "--server-pid", str(service.pid), "--ttft", str(BENCH_TTFT_S),
        "--itl", str(BENCH_ITL_S), "--tokens", str(BENCH_TOKENS), "--timeout", "60",
    ]  # fmt: skip
    if cold:
        args.append("--cold")
    result = run_client(args, timeout=240, api_key=service.api_key)
    result["server_stats"] = stats = service_stats(service)
    # the service's own share of the added TTFT: how late it handed each first token to the socket
    result["server_first_token_late_ms"] = stats.get("first_token_late_ms") if isinstance(stats, dict) else None
    client_cpu = result.get("client_cpu_s") or 0.0
    server_cpu = result.get("server_cpu_s") or 0.0
    result["cpu_per_stream_us"] = round((client_cpu + server_cpu) / max(result["completions"], 1) * 1e6, 1)
    return result


def plain_level(service: Any, transport: str, requests: int, settle_s: float) -> dict[str, Any]:
    reset_service(service)
    settle(settle_s)
    args = [
        "--mode", "plain", "--transport", transport, "--url", str(service.base_url),
        "--concurrency", str(SDK_CONCURRENCY), "--requests", str(requests), "--server-pid", str(service.pid),
        "--timeout", "120",
    ]  # fmt: skip
    result = run_client(args, timeout=300, api_key=service.api_key)
    result["label"] = SDK_LABELS[transport]
    result["prototype_client_cpu_per_request_ms"] = SDK_PROTOTYPE_CPU_MS[transport]
    result["server_stats"] = service_stats(service)
    return result


# --------------------------------------------------------------------------------------------- targets


def _metric(level: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = level
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def evaluate_targets(levels: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it was met (None: level not run)."""
    by_concurrency = {level["concurrency"]: level for level in levels}
    out = []
    for concurrency, name, path, op, threshold in TARGETS:
        level = by_concurrency.get(concurrency)
        value = None if level is None else _metric(level, path)
        met: bool | None = None
        if value is not None:
            met = value == threshold if op == "==" else value < threshold
        out.append(
            {
                "concurrency": concurrency,
                "name": name,
                "metric": ".".join(path),
                "op": op,
                "threshold": threshold,
                "value": value,
                "evaluated": level is not None,
                "met": met,
            }
        )
    return out


# --------------------------------------------------------------------------------------------- reports


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def streams_table(report: dict[str, Any]) -> str:
    header = (
        f"{'streams':>7} {'done':>5} {'err':>4} | {'+TTFT ms p50':>12} {'p95':>6} {'p99':>6} | {'srv p95':>7} | "
        f"{'+total ms p50':>13} {'p95':>6} {'p99':>6} | "
        f"{'cli CPU s':>9} {'srv CPU s':>9} {'us/stream':>9} {'other CPU s':>11} | {'wall s':>6}"
    )
    rows = [header, "-" * len(header)]
    for lv in report["levels"]:
        t, tot = lv["ttft_added_ms"], lv["total_added_ms"]
        server = (lv.get("server_first_token_late_ms") or {}).get("p95")
        rows.append(
            f"{lv['concurrency']:>7} {lv['completions']:>5} {lv['errors']:>4} | {_fmt(t['p50']):>12} "
            f"{_fmt(t['p95']):>6} {_fmt(t['p99']):>6} | {_fmt(server):>7} | "
            f"{_fmt(tot['p50']):>13} {_fmt(tot['p95']):>6} "
            f"{_fmt(tot['p99']):>6} | {_fmt(lv['client_cpu_s'], 2):>9} {_fmt(lv['server_cpu_s'], 2):>9} "
            f"{_fmt(lv['cpu_per_stream_us']):>9} {_fmt(lv.get('other_cpu_s'), 2):>11} | {_fmt(lv['wall_s'], 2):>6}"
        )
    if report.get("machine_quiet") is False:
        rows.append("WARNING: other processes used the CPU during the run (other CPU s); the figures are not clean")
    for target in report["targets"]:
        state = {True: "met", False: "NOT met", None: "not run"}[target["met"]]
        rows.append(
            f"target @{target['concurrency']}: {target['name']}: {state}"
            + (f" ({target['value']})" if target["evaluated"] else "")
        )
    return "\n".join(rows)


def sdk_table(report: dict[str, Any]) -> str:
    header = (
        f"{'transport':<48} {'req/s':>7} {'client CPU ms/req':>17} {'server ms/req':>13} {'errors':>6} "
        f"{'other CPU s':>11}"
    )
    rows = [header, "-" * len(header)]
    for c in report["clients"]:
        rows.append(
            f"{c['label']:<48} {_fmt(c['requests_per_s']):>7} {_fmt(c['client_cpu_per_request_ms'], 3):>17} "
            f"{_fmt(c['server_cpu_per_request_ms'], 3):>13} {c['errors']:>6} {_fmt(c.get('other_cpu_s'), 2):>11}"
        )
    if report.get("machine_quiet") is False:
        rows.append("WARNING: other processes used the CPU during the run (other CPU s); the figures are not clean")
    return "\n".join(rows)


def machine_quiet(measurements: Sequence[dict[str, Any]]) -> bool | None:
    """Whether other processes stayed under 10% of the machine's CPU during every measurement."""
    cpus = os.cpu_count() or 1
    verdicts = [
        m["other_cpu_s"] <= QUIET_SHARE * cpus * m["wall_s"] for m in measurements if m.get("other_cpu_s") is not None
    ]
    return all(verdicts) if verdicts else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------- main


def run_streams_benchmark(
    levels: Sequence[int], *, seed: int, cold: bool, settle_s: float, command: str
) -> dict[str, Any]:
    results = []
    with simulated_service(BENCH_PROFILE, seed) as service:
        profile = service_profile(service)
        if (profile.get("ttft_s"), profile.get("output_tokens_per_s")) != (BENCH_TTFT_S, 1 / BENCH_ITL_S):
            raise RuntimeError(f"profile {BENCH_PROFILE!r} is not what the benchmark assumes: {profile}")
        for concurrency in levels:
            print(f"[bench] {concurrency} concurrent streams ...", file=sys.stderr, flush=True)
            results.append(stream_level(service, concurrency, cold=cold, settle_s=settle_s))
    targets = evaluate_targets(results)
    for level in results:
        level["targets"] = [t for t in targets if t["concurrency"] == level["concurrency"]]
        level["met"] = all(t["met"] for t in level["targets"]) if level["targets"] else None
    evaluated = [t["met"] for t in targets if t["evaluated"]]
    return {
        "benchmark": "sim_streams",
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "sim": {
            "profile": BENCH_PROFILE,
            "seed": seed,
            "ttft_s": BENCH_TTFT_S,
            "itl_s": BENCH_ITL_S,
            "tokens": BENCH_TOKENS,
            "ideal_total_s": round(IDEAL_TOTAL_S, 3),
            "ideal_total_formula": IDEAL_TOTAL_FORMULA,
            "ideal_total_why": (
                "labkit.sim releases the role chunk together with the first token at TTFT after the request "
                "arrives, then one token per inter-token interval on absolute deadlines, and [DONE] right "
                "after the last token: 50 tokens span 49 intervals"
            ),
            "rpm": SIM_RPM,
            "tpm": SIM_TPM,
            "max_sequences": profile.get("max_sequences"),
        },
        "client": {
            "library": "aiohttp",
            "process": "separate (python -m labkit.lessons.bench client), one fresh process per level",
            "connections_warm": not cold,
            "note": WARM_NOTE if not cold else "connections cold: the N TCP handshakes happen inside the measurement",
            "ttft": "first chunk with non-empty delta.content, from the stream's own request start (perf_counter)",
            "total": "data: [DONE], from the stream's own request start",
        },
        "machine_quiet": machine_quiet(results),
        "levels": results,
        "targets": targets,
        "all_targets_met": all(evaluated) if evaluated else None,
    }


def run_sdk_benchmark(requests: int, *, seed: int, settle_s: float, command: str) -> dict[str, Any]:
    clients = []
    with simulated_service(SDK_PROFILE, seed, **SDK_SIM_OPTIONS) as service:
        profile = service_profile(service)
        for transport in PLAIN_MODES:
            print(f"[bench] {requests} plain calls via {transport} ...", file=sys.stderr, flush=True)
            clients.append(plain_level(service, transport, requests, settle_s))
    return {
        "benchmark": "sdk_clients",
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "sim": {
            "profile": SDK_PROFILE,
            "seed": seed,
            "overrides": SDK_SIM_OPTIONS,
            "ttft_s": profile.get("ttft_s"),
            "output_tokens_per_s": profile.get("output_tokens_per_s"),
            "rpm": SIM_RPM,
            "tpm": SIM_TPM,
        },
        "concurrency": SDK_CONCURRENCY,
        "requests": requests,
        "note": (
            "plain (non-streamed) chat completions, max_tokens 16, SDK retries off (max_retries=0); each "
            "transport in a fresh process, one unmeasured warm-up call per worker first; client CPU from "
            "getrusage over the measured calls only"
        ),
        "machine_quiet": machine_quiet(clients),
        "clients": clients,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.lessons.bench",
        description="Benchmark the simulated service under concurrent streams, and the SDK's transports.",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="stream levels (100 500 1000 2000)")
    parser.add_argument("--quick", action="store_true", help="small sizes for tests: 50 and 200 streams, 300 calls")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (build/bench/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sdk-requests", type=int, default=None, help="plain calls per transport (2000)")
    parser.add_argument("--cold", action="store_true", help="do not open connections before the barrier")
    parser.add_argument("--only", choices=("streams", "sdk"), default=None, help="run one of the two parts")
    parser.add_argument("--settle", type=float, default=None, help="pause between levels, s (2, quick 0.5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    levels = args.concurrency or (QUICK_LEVELS if args.quick else DEFAULT_LEVELS)
    requests = args.sdk_requests or (SDK_REQUESTS_QUICK if args.quick else SDK_REQUESTS)
    settle_s = args.settle if args.settle is not None else (0.5 if args.quick else 2.0)
    command = shlex.join(["python", "-m", "labkit.lessons.bench", *(argv if argv is not None else sys.argv[1:])])
    raise_nofile_limit()  # the service inherits it when started from here
    out: Path = args.out
    tables = []
    if args.only in (None, "streams"):
        streams = run_streams_benchmark(levels, seed=args.seed, cold=args.cold, settle_s=settle_s, command=command)
        write_json(out / "sim_streams.json", streams)
        tables.append(f"Simulated service under concurrent streams (ideal total {IDEAL_TOTAL_S:.2f} s):\n")
        tables.append(streams_table(streams))
    if args.only in (None, "sdk"):
        sdk = run_sdk_benchmark(requests, seed=args.seed, settle_s=settle_s, command=command)
        write_json(out / "sdk_clients.json", sdk)
        tables.append(f"\nPlain calls at concurrency {SDK_CONCURRENCY}, {requests} per transport:\n")
        tables.append(sdk_table(sdk))
    print("\n".join(tables))
    print(f"\nJSON written under {out}/")
    return 0
