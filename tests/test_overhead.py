"""The overhead benchmark runs end to end at a small size and writes the JSON its docstring documents.

No timing threshold here: the ratio is what the benchmark *reports* (with its `meets_target` flag); this checks
that both transports were measured, each arm's figure is there, and the ratios are the arms' quotients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"bare", "default_chain", "default_chain_without_semantic"}


@pytest.mark.timeout(180)
def test_the_overhead_bench_writes_both_ratios_per_transport(tmp_path):
    out = tmp_path / "overhead.json"
    command = ["-m", "labkit.lessons.overhead", "--bench", "--requests", "30", "--rounds", "1", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "overhead" and report["target_ratio"] == 1.10
    for kind in ("lean", "sdk"):
        figures = report[kind]
        cpu = figures["cpu_per_request_ms"]
        assert set(cpu) == ARMS and all(value > 0 for value in cpu.values())
        assert figures["ratio_without_semantic"] == pytest.approx(
            cpu["default_chain_without_semantic"] / cpu["bare"], abs=0.01
        )
        assert figures["meets_target"] == (figures["ratio_without_semantic"] <= report["target_ratio"])
