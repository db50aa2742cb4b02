"""labkit.monitoring.histogram and registry: the error bound, bounded memory, bad input, windows."""

import math
import pickle
import random

import numpy as np
import pytest

from labkit.layers.metrics import RequestRecord
from labkit.monitoring import Histogram, Metrics, Rolling
from labkit.monitoring.registry import BATCH


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lognormal(n, seed=0):
    rng = random.Random(seed)
    return [rng.lognormvariate(-0.5, 0.9) for _ in range(n)]


@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.95, 0.99, 0.999])
def test_quantiles_are_within_the_stated_relative_error(q):
    values = lognormal(50_000)
    hist = Histogram(relative_accuracy=0.01)
    hist.extend(values)
    exact = float(np.quantile(values, q, method="lower"))
    assert abs(hist.quantile(q) - exact) <= 0.01 * exact + 1e-12


def test_memory_does_not_grow_with_the_number_of_observations():
    small, large = Histogram(), Histogram()
    small.extend(lognormal(10_000, seed=1))
    large.extend(lognormal(200_000, seed=2))
    assert len(pickle.dumps(large)) < 1.5 * len(pickle.dumps(small))


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_a_bad_duration_is_refused_and_nothing_is_recorded(bad):
    hist = Histogram()
    hist.observe(0.5)
    with pytest.raises(ValueError, match="finite number >= 0"):
        hist.observe(bad)
    assert hist.count == 1 and hist.sum == 0.5


def test_a_batch_records_what_one_by_one_observations_would():
    values = [*lognormal(20_000, seed=5), 0.0, 0.0, 1.0, 0.001]
    batch, single = Histogram(), Histogram()
    batch.extend(values)
    for value in values:
        single.observe(value)
    assert batch.count == single.count and batch.cumulative() == single.cumulative()
    assert (batch.min, batch.max) == (single.min, single.max) and batch.sum == pytest.approx(single.sum)
    for q in (0.0, 0.001, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert batch.quantile(q) == pytest.approx(single.quantile(q), rel=0.01)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_a_batch_with_a_bad_duration_is_refused_whole(bad):
    hist = Histogram()
    hist.observe(0.5)
    with pytest.raises(ValueError, match="finite number >= 0"):
        hist.extend([0.1, bad, 0.2])
    assert hist.count == 1 and hist.sum == 0.5 and hist.cumulative()[-1] == (math.inf, 1)


def test_a_few_values_at_once_record_what_one_by_one_observations_would():
    values = [*lognormal(300, seed=6), 0.0, 1.0]  # past the point where kept values go into the sketch
    few, single = Histogram(), Histogram()
    for start in range(0, len(values), 64):
        few.observe_many(values[start : start + 64])
    for value in values:
        single.observe(value)
    assert few.count == single.count and few.cumulative() == single.cumulative()
    assert (few.min, few.max) == (single.min, single.max) and few.sum == pytest.approx(single.sum)
    for q in (0.0, 0.01, 0.5, 0.99, 1.0):
        assert few.quantile(q) == single.quantile(q)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_a_few_values_with_a_bad_one_are_refused_whole(bad):
    hist = Histogram()
    hist.observe(0.5)
    with pytest.raises(ValueError, match="finite number >= 0"):
        hist.observe_many([0.1, bad, 0.2])
    assert hist.count == 1 and hist.sum == 0.5 and hist.cumulative()[-1] == (math.inf, 1)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Histogram(relative_accuracy=0)
    with pytest.raises(ValueError):
        Histogram(buckets=[1.0, 0.5])
    with pytest.raises(ValueError):
        Histogram().quantile(1.5)


def test_an_empty_histogram_has_no_quantile():
    assert Histogram().quantile(0.95) is None and Histogram().mean is None


def test_buckets_are_cumulative_and_exact_at_a_bound():
    hist = Histogram()
    hist.extend([0.2, 0.9, 1.0, 1.2, 7.0])
    cumulative = dict(hist.cumulative())
    assert cumulative[1.0] == 3 and cumulative[math.inf] == 5
    assert hist.count_at_most(1.0) == 3


def test_merging_equals_observing_everything():
    a, b, both = Histogram(), Histogram(), Histogram()
    xs, ys = lognormal(3000, 3), lognormal(3000, 4)
    a.extend(xs)
    b.extend(ys)
    both.extend(xs + ys)
    a.merge(b)
    assert a.count == both.count and a.cumulative() == both.cumulative()
    assert a.quantile(0.99) == pytest.approx(both.quantile(0.99))


def test_rolling_forgets_slots_older_than_the_window():
    clock = FakeClock()
    ring = Rolling(list, window_s=10, slot_s=1, clock=clock)
    ring.current().append("old")
    clock.now += 11
    ring.current().append("new")
    assert ring.within() == [["new"]]
    with pytest.raises(ValueError, match="keeps 10"):
        ring.within(20)


def record(outcome="ok", source="upstream", latency=0.5, ttft=0.2):
    return RequestRecord(
        key="k", model="gpt-4o", stream=True, started=0.0, latency_s=latency, ttft_s=ttft,
        prompt_tokens=10, completion_tokens=5, cost_usd=0.01, outcome=outcome, source=source,
    )  # fmt: skip


def test_metrics_keep_totals_and_the_last_window_apart():
    clock = FakeClock()
    metrics = Metrics(window_s=10, slot_s=1, clock=clock)
    for _ in range(5):
        metrics.record(record(outcome="APIConnectionError"))
    clock.now += 30
    for _ in range(5):
        metrics.record(record(source="cache"))
    total, window = metrics.snapshot(), metrics.snapshot(10)
    assert total["requests"] == 10 and total["error_rate"] == 0.5
    assert window["requests"] == 5 and window["error_rate"] == 0.0 and window["cache_hit_rate"] == 1.0
    assert total["cost_usd"] == pytest.approx(0.05) and total["saved_usd"] == pytest.approx(0.05)


def test_a_batch_counts_each_requests_tokens_and_cost_under_its_source():
    metrics = Metrics()
    for i in range(BATCH + 3):
        metrics.record(record(source="upstream" if i % 3 else "cache"))
    total = metrics.view()
    hits = sum(1 for i in range(BATCH + 3) if i % 3 == 0)
    assert total.counter("requests", source="cache") == hits
    assert total.counter("cost_usd", source="cache") == pytest.approx(0.01 * hits)
    assert total.counter("cost_usd", source="upstream") == pytest.approx(0.01 * (BATCH + 3 - hits))
    assert total.counter("tokens", kind="input") == 10 * (BATCH + 3) and total.counter("tokens", kind="output") == 5 * (
        BATCH + 3
    )


def test_every_recorded_request_is_counted_across_batches_and_sub_windows():
    clock = FakeClock()
    metrics = Metrics(window_s=10, slot_s=1, clock=clock)
    n = 3 * BATCH + 5
    for i in range(n):
        metrics.record(record(latency=0.1 + i / 1000), itl=[0.01, 0.02])
        if i % 50 == 0:
            clock.now += 1  # a new sub-window after requests 0, 50, 100 and 150: mid-batch
    total = metrics.view()
    assert total.counter("requests") == n
    assert total.hist("request_duration").count == n and total.hist("itl").count == 2 * n
    assert metrics.snapshot(1)["requests"] == n - 151  # the last sub-window's requests, 151 on


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_a_request_with_a_bad_duration_is_refused_and_the_others_are_kept(bad):
    metrics = Metrics()
    metrics.record(record())
    with pytest.raises(ValueError, match="finite number >= 0"):
        metrics.record(record(latency=bad))
    with pytest.raises(ValueError, match="finite number >= 0"):
        metrics.record(record(), itl=[0.1, bad])
    metrics.record(record())
    assert metrics.snapshot()["requests"] == 2 and metrics.view().hist("itl").count == 0


def test_counters_only_go_up():
    with pytest.raises(ValueError, match="only goes up"):
        Metrics().count("tokens", -1, kind="input")
