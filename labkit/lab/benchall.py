"""Every benchmark of the project with one command: `python -m labkit.lab.benchall [--quick] [--only NAME ...]`.

Each lesson's benchmark is its own command writing JSON under `build/bench/`. This runs every one listed in
`REGISTRY` that exists here (a module that is not installed or not written yet is skipped, with a note saying so),
each in its own process (its CPU and its event loop are its own, as the benchmarks assume), then merges their
JSON into `build/bench/all.json` and writes `build/bench/index.html`: a status table and plotly charts of every
file's figures (plotly.js inlined once, so the page works offline).

A benchmark that fails or times out is recorded with its exit code and the tail of its output; the others still
run. `--skip-run` only merges what is already under `build/bench/` (e.g. after running one benchmark by hand).
Timings on a shared 2-core machine are noisy: each benchmark reports ratios where it can; read those.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import html
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("build/bench")


@dataclasses.dataclass(frozen=True)
class BenchCommand:
    """One benchmark: `python -m <module> <args>`, writing `outputs` into the output folder."""

    name: str
    lesson: str
    module: str
    args: tuple[str, ...]
    outputs: tuple[str, ...]
    quick_args: tuple[str, ...] = ()  # added with --quick (small sizes)
    timeout_s: float = 1800.0

    def argv(self, out: Path, quick: bool) -> list[str]:
        args = [a.format(out=out) for a in self.args]
        if quick:
            args += [a.format(out=out) for a in self.quick_args]
        return [sys.executable, "-m", self.module, *args]

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


#: Every benchmark command of the project, in lesson order. A teammate adding one adds a line here.
REGISTRY: tuple[BenchCommand, ...] = (
    BenchCommand(
        "sim-and-clients",
        "00 the simulated service and SDK clients",
        "labkit.lessons.bench",
        ("--out", "{out}"),
        ("sim_streams.json", "sdk_clients.json"),
        ("--quick",),
    ),
    BenchCommand(
        "admission",
        "01 batching",
        "labkit.lessons.admission",
        ("--bench", "--out", "{out}/admission.json"),
        ("admission.json",),
        ("--requests", "100"),
    ),
    BenchCommand(
        "dedup",
        "02 de-duplication",
        "labkit.lessons.dedup",
        ("--bench", "--out", "{out}/dedup.json"),
        ("dedup.json",),
        ("-n", "500", "--repeats", "2"),
    ),
    BenchCommand(
        "streaming",
        "03 streaming",
        "labkit.lessons.streaming",
        ("--bench", "--out", "{out}/streaming.json"),
        ("streaming.json",),
        ("--pairs", "20", "--streams", "30", "--rounds", "1"),
    ),
    BenchCommand(
        "cache",
        "06-07 caching",
        "labkit.lessons.cache",
        ("--bench", "--out", "{out}/cache.json"),
        ("cache.json",),
        ("-n", "300", "--semantic-entries", "1000", "--semantic-queries", "50"),
    ),
    BenchCommand(
        "overhead",
        "06/12 the default chain's client CPU per cache miss against a bare call",
        "labkit.lessons.overhead",
        ("--bench", "--out", "{out}/overhead.json"),
        ("overhead.json",),
        ("--requests", "200", "--rounds", "2"),
    ),
    BenchCommand(
        "pooling",
        "08 pooling",
        "labkit.lessons.pooling",
        ("--out", "{out}/pooling.json"),
        ("pooling.json",),
        ("--quick",),
    ),
    BenchCommand(
        "resilience",
        "09-10 retries, breakers, balancing, hedging",
        "labkit.lessons.resilience",
        ("--bench", "--out", "{out}/resilience.json"),
        ("resilience.json",),
        ("--requests", "300", "--lb-requests", "150", "--hedge-requests", "150"),
    ),
    BenchCommand(
        "monitoring",
        "11 monitoring",
        "labkit.lessons.monitoring",
        ("--bench", "--out", "{out}/monitoring.json"),
        ("monitoring.json",),
        ("--n", "100000"),
    ),
    BenchCommand(
        "capstone",
        "12 capstone",
        "labkit.lessons.capstone",
        ("--bench", "--out", "{out}/capstone.json"),
        ("capstone.json",),
        ("--quick",),
    ),
)


def run_one(command: BenchCommand, out: Path, *, quick: bool) -> dict[str, Any]:
    """Run one benchmark in its own process; never raises (a failure is a recorded outcome)."""
    entry: dict[str, Any] = {"name": command.name, "lesson": command.lesson, "module": command.module}
    if not command.available():
        entry.update(status="skipped", note=f"module {command.module} is not available here (not written yet?)")
        return entry
    argv = command.argv(out, quick)
    entry["command"] = " ".join(["python", *argv[1:]])
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=command.timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        entry.update(status="timeout", seconds=time.perf_counter() - started, note=f"killed after {error.timeout} s")
        return entry
    entry["seconds"] = time.perf_counter() - started
    entry["returncode"] = proc.returncode
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        entry.update(status="failed", note="\n".join(tail))
        return entry
    missing = [name for name in command.outputs if not (out / name).exists()]
    entry["status"] = "ok" if not missing else "no output"
    if missing:
        entry["note"] = f"exited 0 but did not write {missing}"
    return entry


def merge(out: Path, commands: Sequence[BenchCommand], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`all.json`: how each command went and every output file's JSON, keyed by benchmark and file."""
    results: dict[str, dict[str, Any]] = {}
    for command in commands:
        for name in command.outputs:
            path = out / name
            if path.exists():
                try:
                    results.setdefault(command.name, {})[name] = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as error:
                    results.setdefault(command.name, {})[name] = {"error": f"not valid JSON: {error}"}
    return {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "note": "Timings on a shared machine are noisy: compare ratios within one benchmark, not absolutes.",
        "commands": list(runs),
        "results": results,
    }


def numeric_leaves(value: Any, prefix: str = "", limit: int = 400) -> list[tuple[str, float]]:
    """Every number in a JSON value with its dotted path (booleans left out), at most `limit` of them."""
    found: list[tuple[str, float]] = []

    def walk(v: Any, path: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int | float):
            found.append((path, float(v)))
        elif isinstance(v, Mapping):
            for k, sub in v.items():
                walk(sub, f"{path}.{k}" if path else str(k))
        elif isinstance(v, list):
            for i, sub in enumerate(v[:50]):
                walk(sub, f"{path}[{i}]")

    walk(value, prefix)
    return found


_UNITS = (
    ("_us", "µs"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_rps", "requests/s"),
    ("rate", "share"),
    ("share", "share"),
    ("ratio", "ratio"),
    ("_usd", "USD"),
)


def unit_of(path: str) -> str:
    leaf = path.rsplit(".", 1)[-1].split("[")[0].lower()
    for suffix, unit in _UNITS:
        if leaf.endswith(suffix) or (suffix in ("rate", "share", "ratio") and suffix in leaf):
            return unit
    return "other"


def figures(merged: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """One plotly figure per benchmark output: its numbers grouped by unit (a panel per unit)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs: list[tuple[str, Any]] = []
    capstone = merged["results"].get("capstone", {}).get("capstone.json")
    if isinstance(capstone, Mapping) and "workloads" in capstone:
        figs.append(("capstone: before/after", capstone_figure(capstone)))
    for bench, files in merged["results"].items():
        for file, data in files.items():
            groups: dict[str, list[tuple[str, float]]] = {}
            for path, number in numeric_leaves(data):
                unit = unit_of(path)
                if unit != "other":
                    groups.setdefault(unit, []).append((path, number))
            if not groups:
                continue
            units = sorted(groups, key=lambda u: -len(groups[u]))[:4]
            fig = make_subplots(rows=len(units), cols=1, subplot_titles=[f"unit: {u}" for u in units])
            for row, unit in enumerate(units, start=1):
                pairs = groups[unit][:60]
                fig.add_trace(
                    go.Bar(x=[p for p, _ in pairs], y=[v for _, v in pairs], name=unit, showlegend=False),
                    row=row,
                    col=1,
                )
                fig.update_yaxes(title_text=unit, row=row, col=1)
            fig.update_layout(
                title=f"{bench} / {file}: every figure it reports, by unit", height=330 * len(units), bargap=0.2
            )
            figs.append((f"{bench} / {file}", fig))
    return figs


def capstone_figure(capstone: Mapping[str, Any]) -> Any:
    """The capstone's before/after rows (after as a share of before) for each workload."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, result in capstone["workloads"].items():
        rows = [r for r in result.get("table", []) if r.get("before") and r.get("after") is not None]
        fig.add_trace(
            go.Bar(
                x=[r["row"] for r in rows],
                y=[r["after"] / r["before"] for r in rows],
                name=name,
                text=[r.get("change") or "" for r in rows],
            )
        )
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(
        title="Capstone: labkit's chain as a multiple of the naive client (below 1 = less; throughput above 1 = more)",
        yaxis_title="after / before (ratio)",
        barmode="group",
    )
    return fig


def write_html(merged: Mapping[str, Any], path: Path) -> None:
    import plotly.io as pio

    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(c))}</td>"
            for c in (
                r["name"],
                r["lesson"],
                r["status"],
                f"{r['seconds']:.1f}" if "seconds" in r else "",
                r.get("command", ""),
            )
        )
        + f"<td><pre>{html.escape(str(r.get('note', '')))}</pre></td></tr>"
        for r in merged["commands"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>LLM Performance Lab: every benchmark</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top}table{border-collapse:collapse}pre{margin:0;white-space:pre-wrap;max-width:50em}</style>",
        "</head><body><h1>LLM Performance Lab: every benchmark</h1>",
        f"<p>Generated {html.escape(merged['generated_at'])} on {html.escape(str(merged['machine']))}. "
        f"{html.escape(merged['note'])} All figures: <a href='all.json'>all.json</a>.</p>",
        "<table><tr><th>benchmark</th><th>lesson</th><th>status</th><th>s</th><th>command</th><th>note</th></tr>",
        rows,
        "</table>",
    ]
    first = True
    for title, fig in figures(merged):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(pio.to_html(fig, include_plotlyjs=first, full_html=False))
        first = False
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.lab.benchall", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (build/bench)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run of every benchmark)")
    parser.add_argument("--only", nargs="+", default=None, help=f"run only these: {[c.name for c in REGISTRY]}")
    parser.add_argument("--skip-run", action="store_true", help="only merge the JSON already in the folder")
    parser.add_argument("--list", action="store_true", help="list the registry and whether each is available")
    args = parser.parse_args(argv)
    if args.list:
        for c in REGISTRY:
            print(f"{c.name:<16} {c.lesson:<44} {'available' if c.available() else 'MISSING'}  python -m {c.module}")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {c.name for c in REGISTRY})
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {[c.name for c in REGISTRY]}")
    commands = [c for c in REGISTRY if not args.only or c.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for command in commands:
        if args.skip_run:
            entry = {"name": command.name, "lesson": command.lesson, "module": command.module}
            present = [o for o in command.outputs if (args.out / o).exists()]
            entry.update(status="merged" if present else "skipped", note="" if present else "no output to merge")
        else:
            print(f"[benchall] {command.name} ...", flush=True)
            entry = run_one(command, args.out, quick=args.quick)
        print(f"[benchall] {command.name}: {entry['status']} {entry.get('note', '')}".rstrip(), flush=True)
        runs.append(entry)
    for command in REGISTRY:  # what was not run this time but is on disk is merged too, and says so
        if command not in commands:
            present = [o for o in command.outputs if (args.out / o).exists()]
            runs.append(
                {
                    "name": command.name,
                    "lesson": command.lesson,
                    "module": command.module,
                    "status": "not run (earlier output merged)" if present else "not run",
                    "note": "",
                }
            )
    merged = merge(args.out, REGISTRY, runs)
    (args.out / "all.json").write_text(json.dumps(merged, indent=1, default=str), encoding="utf-8")
    write_html(merged, args.out / "index.html")
    print(f"[benchall] wrote {args.out / 'all.json'} and {args.out / 'index.html'}")
    failed = [r["name"] for r in runs if r["status"] in ("failed", "timeout", "no output")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
