"""The main job: execute every lesson notebook headlessly and write an HTML report under `build/`.

`python -m labkit.lab.report` runs `notebooks/NN_*.ipynb` in order with papermill (learner defaults, so the
figures are the ones a learner would see), saves the executed notebooks, renders each to HTML with
nbconvert and writes `build/report/index.html`: every chart of every lesson and every notebook's measured
results, with plotly.js embedded once so the report opens offline. A notebook that fails is reported and
the others still run; the exit code says whether all passed.

While each notebook runs, `labkit.lab.memory.PeakMemory` samples the summed resident memory of its kernel and every
process the kernel starts (simulated services, Redis, Memcached, workers) every 0.2 s; each notebook's peak goes in
the report's table and in `build/report/runs.json`, against the lab's budget (`labkit.lab.memory.BUDGET_MB`).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from labkit.lab.memory import BUDGET_MB, PeakMemory

ROOT = Path(__file__).resolve().parents[2]  # the repository (labkit/lab/report.py)
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(o) or p.stem == o for o in only)]
    return found


def execute(path: Path, out_dir: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run one notebook with papermill; return its status, duration, peak memory and results JSON.

    The memory sampler counts the processes started under this one while the notebook runs: papermill's kernel
    and everything the kernel starts."""
    import papermill

    executed = out_dir / "executed" / path.name
    results_path = out_dir / "results" / f"{path.stem}.json"
    executed.parent.mkdir(parents=True, exist_ok=True)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.unlink(missing_ok=True)
    started = time.perf_counter()
    status, error = "ok", None
    sampler = PeakMemory()
    try:
        with sampler:
            papermill.execute_notebook(
                str(path),
                str(executed),
                parameters={"RESULTS_PATH": str(results_path.resolve()), "INTERACTIVE": False, **parameters},
                kernel_name="python3",
                cwd=str(path.parent),
                progress_bar=False,
            )
    except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else None
    return {
        "notebook": path.name,
        "status": status,
        "error": error,
        "seconds": round(time.perf_counter() - started, 1),
        "executed": executed,
        "results": results,
        "memory": sampler.peak.as_dict(),
    }


def render_html(executed: Path, out_dir: Path) -> Path | None:
    """The executed notebook as a standalone HTML page (None if it could not be rendered)."""
    if not executed.exists():
        return None
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    target = out_dir / "report" / f"{executed.stem}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body, encoding="utf-8")
    return target


def figures(executed: Path) -> list[dict[str, Any]]:
    """Every plotly figure a notebook displayed, in order."""
    if not executed.exists():
        return []
    nb = json.loads(executed.read_text(encoding="utf-8"))
    found = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY_MIME)
            if figure:
                found.append(figure)
    return found


def write_index(runs: list[dict[str, Any]], out_dir: Path) -> Path:
    """One self-contained page: a table of lessons, then each lesson's charts and results."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    rows, sections = [], []
    for run in runs:
        name = html.escape(run["notebook"])
        link = f'<a href="{html.escape(Path(run["notebook"]).stem)}.html">{name}</a>' if run.get("html") else name
        memory = run.get("memory") or {}
        over = " class='failed'" if memory.get("over_budget") else ""
        rows.append(
            f"<tr><td>{link}</td><td class='{run['status']}'>{run['status']}</td><td>{run['seconds']}</td>"
            f"<td{over}>{memory.get('peak_mb', '')}</td><td>{html.escape(_largest(memory))}</td></tr>"
        )
        charts = "".join(
            pio.to_html(pio.from_json(json.dumps(fig)), include_plotlyjs=False, full_html=False)
            for fig in figures(run["executed"])
        )
        results = html.escape(json.dumps(run["results"], indent=2, ensure_ascii=False)) if run["results"] else "none"
        error = f"<pre class='failed'>{html.escape(run['error'])}</pre>" if run["error"] else ""
        tables = "".join(  # a notebook may hand the report tables to show: {"report_tables": {title: [rows]}}
            f"<h3>{html.escape(title)}</h3><table><tr>"
            + "".join(f"<th>{html.escape(str(k))}</th>" for k in rows_[0])
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows_)
            + "</table>"
            for title, rows_ in ((run["results"] or {}).get("report_tables") or {}).items()
            if rows_
        )
        sections.append(
            f"<section><h2>{name}</h2>{error}{tables}{charts}"
            f"<details><summary>Measured results (JSON)</summary><pre>{results}</pre></details></section>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>LLM Performance Lab report</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .8em}}
.ok{{color:#1a7f37}}.failed{{color:#cf222e}}pre{{background:#f6f8fa;padding:.8em;overflow:auto}}</style>
</head><body><h1>LLM Performance Lab: report</h1>
<p>Every notebook executed headlessly against the simulated service on {time.strftime("%Y-%m-%d %H:%M")}.
Every figure below was measured in this run.</p>
<p>Peak memory: the summed resident memory (RSS) of the notebook's kernel and every process it started, sampled
every 0.2 s; the budget is {BUDGET_MB} MB per notebook (a Binder session has 1-2 GB). Summed RSS counts memory that
processes share once per process, so it overstates what the machine holds.</p>
<table><tr><th>notebook</th><th>status</th><th>seconds</th><th>peak memory (MB)</th>
<th>largest at the peak (MB)</th></tr>{"".join(rows)}</table>
{"".join(sections)}</body></html>"""
    target = out_dir / "report" / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target


def _largest(memory: dict[str, Any], n: int = 4) -> str:
    """The processes that held the most at a notebook's peak, e.g. ``kernel 499, labkit.sim 130`` (MB)."""
    return ", ".join(f"{p['process']} {p['rss_mb']:.0f}" for p in (memory.get("at_peak") or [])[:n])


def write_runs(runs: list[dict[str, Any]], out_dir: Path) -> Path:
    """What the report measured of each notebook (status, seconds, peak memory) as JSON, for tools and tests."""
    target = out_dir / "report" / "runs.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    keep = ("notebook", "status", "error", "seconds", "memory")
    target.write_text(json.dumps([{k: run.get(k) for k in keep} for run in runs], indent=2) + "\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument("--only", nargs="*", help="notebook prefixes to run, e.g. 00 03")
    parser.add_argument("-p", "--param", action="append", default=[], help="NAME=JSON parameter for every notebook")
    args = parser.parse_args(argv)
    parameters = {}
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
    runs = []
    for path in notebooks(args.notebooks, args.only):
        print(f"running {path.name} …", flush=True)
        run = execute(path, args.out, parameters)
        run["html"] = render_html(run["executed"], args.out)
        peak = run["memory"]
        budget = "  OVER THE BUDGET" if peak["over_budget"] else ""
        print(f"  {run['status']} in {run['seconds']} s, peak memory {peak['peak_mb']} MB{budget}", flush=True)
        runs.append(run)
    write_runs(runs, args.out)
    index = write_index(runs, args.out)
    failed = [r["notebook"] for r in runs if r["status"] != "ok"]
    print(f"report: {index}" + (f"  (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
