"""The pooling chapter's plumbing: its progress bar, charts, tables and results, one call each from a cell.

The measurements live in `labkit.lessons.pooling`; this module only shapes what they return for reading, so
the notebook's cells stay about the client, the pool and the transports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from labkit.lab import viz
from labkit.lab.progress import Ticker

__all__ = ["Ticker", "cost_chart", "limit_rows", "results", "run_row", "seen_table", "transports_chart"]


def cost_chart(built: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Client CPU per request of each client in "Build it", titled with the per-request client's multiple."""
    cpu = {name: row["client CPU ms/request"] for name, row in built.items()}
    per, pooled = built["client per request"], built["one pooled client"]
    title = (
        f"A client per request cost {per['client CPU ms/request'] / pooled['client CPU ms/request']:.0f}x the client "
        f"CPU of one pooled client, with {per['TLS handshakes']} TLS handshakes against {pooled['TLS handshakes']}"
    )
    return viz.bars(cpu, title=title, unit="client CPU per request (ms)")


def run_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """One `pooling.run_calls` result as a table row."""
    return {
        "requests/s": run["requests_per_s"],
        "p50 ms": run["latency_ms"]["p50"],
        "client CPU ms/request": run["client_cpu_per_request_ms"],
        "connections (server)": run["connections_opened"],
        "errors": sum(run["errors"].values()),
    }


def limit_rows(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The pool-limit runs: callers against connections, throughput and `PoolTimeout`s."""
    return viz.table(
        [
            {
                "max_connections": r["max_connections"],
                "callers": r["concurrency"],
                "requests": r["requests"],
                "requests/s": r["requests_per_s"],
                "PoolTimeouts": r["pool_timeouts"],
                "p50 ms": r["latency_ms"]["p50"],
            }
            for r in rows
        ]
    )


def transports_chart(calls: Mapping[str, Mapping[str, Any]], streams: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Per transport: client CPU per plain call and per stream, and the time to first token it added."""
    rows = {
        s["transport"]: {
            "client CPU ms / plain call": calls[s["transport"]]["client_cpu_per_request_ms"],
            "client CPU ms / stream": s["client_cpu_per_stream_ms"],
            "added TTFT p50 ms": s["ttft_added_ms"]["p50"],
        }
        for s in streams
    }
    sdk, lean = rows["sdk_httpx"], rows["lean"]
    title = (
        f"At {streams[0]['streams']} streams the SDK on httpx2 cost "
        f"{sdk['client CPU ms / stream'] / lean['client CPU ms / stream']:.1f}x "
        f"the lean transport's CPU per stream and added {sdk['added TTFT p50 ms']:.0f} ms to the first token "
        f"(lean: {lean['added TTFT p50 ms']:.0f} ms)"
    )
    return viz.grouped_bars(rows, title=title, unit="ms", log=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def results(measured: Mapping[str, Any]) -> dict[str, Any]:
    """The results JSON: what each section stored in `measured`, and the ratios the tests and the index read."""
    out = dict(measured)
    built = measured.get("build_it")
    if built:
        per, pooled = built["client per request"], built["one pooled client"]
        out["pooled_over_per_request_rps"] = _ratio(pooled["requests/s"], per["requests/s"])
        out["per_request_over_pooled_cpu"] = _ratio(per["client CPU ms/request"], pooled["client CPU ms/request"])
    calls = measured.get("transports")
    if calls:
        cpu = {k: v["client_cpu_per_request_ms"] for k, v in calls.items()}
        out["httpx_over_aiohttp_cpu"] = _ratio(cpu["sdk_httpx"], cpu["sdk_aiohttp"])
        out["sdk_over_lean_cpu"] = _ratio(cpu["sdk_httpx"], cpu["lean"])
    return out


def seen_table(measured: Mapping[str, Any]) -> pd.DataFrame:
    """The run's headline numbers, one row per finding, from whatever sections ran."""
    r = results(measured)
    rows: dict[str, Any] = {}
    if "build_it" in r:
        b = r["build_it"]
        rows["client per request / pooled client: client CPU (x)"] = r["per_request_over_pooled_cpu"]
        rows["pooled client / client per request: requests/s (x)"] = r["pooled_over_per_request_rps"]
        rows["TLS handshakes, client per request"] = b["client per request"]["TLS handshakes"]
        rows["TLS handshakes, pooled client"] = b["one pooled client"]["TLS handshakes"]
    if "labkit_pool" in r:
        rows["labkit ClientPool (SDK): client CPU per request (ms)"] = r["labkit_pool"]["client_cpu_per_request_ms"]
        rows["labkit ClientPool (SDK): connections the server saw"] = r["labkit_pool"]["connections_opened"]
    for x in r.get("pool_limits", []):
        rows[f"PoolTimeouts, {x['concurrency']} callers on {x['max_connections']} connections"] = x["pool_timeouts"]
    if "transports" in r:
        rows["SDK on httpx2 / SDK on aiohttp: client CPU per call (x)"] = r["httpx_over_aiohttp_cpu"]
        rows["SDK on httpx2 / lean transport: client CPU per call (x)"] = r["sdk_over_lean_cpu"]
    for s in r.get("streams", []):
        rows[f"{s['transport']}: added TTFT p50 at {s['streams']} streams (ms)"] = s["ttft_added_ms"]["p50"]
    return viz.table({name: {"value": value} for name, value in rows.items()})
