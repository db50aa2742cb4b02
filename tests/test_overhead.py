"""The overhead benchmark runs end to end at a small size and writes the JSON its docstring documents.

No timing threshold here: the ratio is what the benchmark *reports* (with its `meets_target` flag); this checks
that both transports were measured, each arm's figure is there, the ratios are the arms' quotients, and every layer
has its own figure over the stub transport."""

from __future__ import annotations

import json
import time

import pytest
from conftest import run_module

from labkit.lessons import overhead
from labkit.lessons.overhead import MEASURED_LAYERS

ARMS = {"bare", "default_chain", "default_chain_without_semantic"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("overhead") / "overhead.json"
    args = ["--bench", "--layers", "--requests", "40", "--block", "10", "--rounds", "1", "--processes", "2"]
    run_module("labkit.lessons.overhead", *args, "--out", str(out), timeout=170)
    return json.loads(out.read_text())


@pytest.mark.timeout(180)
def test_the_overhead_bench_writes_both_ratios_per_transport(report):
    assert report["benchmark"] == "overhead" and report["target_ratio"] == 1.10 and report["switched_off"] == []
    for kind in ("lean", "sdk"):
        figures = report[kind]
        cpu = figures["cpu_per_request_ms"]
        assert set(cpu) == ARMS and all(value > 0 for value in cpu.values())
        collector = figures["of_which_garbage_collector_ms"]
        assert set(collector) == ARMS and all(0 <= collector[arm] < cpu[arm] for arm in ARMS)
        assert figures["ratio_without_semantic"] == pytest.approx(
            cpu["default_chain_without_semantic"] / cpu["bare"], abs=0.01
        )
        low, high = figures["ratio_without_semantic_ci95"]
        assert low <= figures["ratio_without_semantic"] <= high
        spread = figures["ratio_without_semantic_across_processes"]
        assert len(spread["by_process"]) == report["processes"] == 2
        assert spread["by_process"][0] == figures["ratio_without_semantic"]
        assert spread["ci95"][0] <= spread["mean"] <= spread["ci95"][1]
        assert figures["meets_target"] == (spread["mean"] <= report["target_ratio"])
        assert set(figures["hedges"]) == {"sent", "won", "paused"}
        assert figures["hedges"]["won"] <= figures["hedges"]["sent"]


@pytest.mark.timeout(180)
def test_the_overhead_bench_measures_every_layer_over_the_stub(report):
    layers = report["layers_over_stub"]
    assert set(layers["alone_over_none_us"]) == set(MEASURED_LAYERS)
    assert layers["chain_of_none_us"] > 0 and layers["all_over_none_us"] > 0


@pytest.mark.timeout(180)
def test_the_overhead_bench_switches_off_what_it_is_told_and_says_so(tmp_path):
    out = tmp_path / "overhead.json"
    args = ["--bench", "--without", "dedup", "hedge", "--requests", "20", "--block", "10", "--processes", "1"]
    args += ["--out", str(out)]
    run_module("labkit.lessons.overhead", *args, timeout=170)
    report = json.loads(out.read_text())
    assert report["switched_off"] == ["dedup", "hedge"]
    assert all(report[kind]["hedges"] is None for kind in ("lean", "sdk"))
    assert all(report[kind]["ratio_without_semantic"] > 0 for kind in ("lean", "sdk"))


def test_the_ratio_across_processes_is_their_mean_with_a_t_interval():
    spread = overhead.across_processes([1.0, 1.1, 1.2])
    assert spread["by_process"] == [1.0, 1.1, 1.2] and spread["mean"] == pytest.approx(1.1)
    half = 4.303 * 0.1 / 3**0.5  # t(0.975, 2 degrees of freedom) times the standard error
    assert spread["ci95"] == pytest.approx([1.1 - half, 1.1 + half], abs=1e-3)
    assert overhead.across_processes([1.05])["ci95"] is None  # one process: no interval over processes


def test_the_overhead_bench_needs_at_least_one_process():
    with pytest.raises(SystemExit):
        overhead.main(["--bench", "--processes", "0"])


def test_the_overhead_bench_refuses_a_switch_it_does_not_know():
    with pytest.raises(SystemExit):
        overhead.main(["--bench", "--without", "dedupe"])


async def test_compare_alternates_blocks_and_reports_the_quotient_of_the_means():
    order: list[str] = []

    def arm(name: str, cost_s: float):
        async def call(request):
            order.append(name)
            end = time.process_time() + cost_s
            while time.process_time() < end:  # spend CPU, as a request does
                pass

        return call

    result = await overhead.compare(
        {"cheap": arm("cheap", 0.0002), "dear": arm("dear", 0.0004)}, requests=20, block=5, concurrency=1, max_tokens=1
    )
    measured = order[40:60]  # after each arm's 20 warm-up requests: the first two blocks of each arm
    assert measured == ["cheap"] * 5 + ["dear"] * 5 + ["dear"] * 5 + ["cheap"] * 5  # ABBA
    assert result.blocks == 4 and result.cpu["dear"] > result.cpu["cheap"]
    assert result.ratio == pytest.approx(result.cpu["dear"] / result.cpu["cheap"])
    assert result.ratio_ci95[0] <= result.ratio <= result.ratio_ci95[1]
