"""Prometheus exposition: parsed by the official parser, names valid, every layer's counters with a layer label."""

import dataclasses
import re
from collections import Counter

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from labkit.chain import Chain
from labkit.dedup.singleflight import SingleFlight
from labkit.layers.breaker import CircuitBreaker
from labkit.layers.metrics import MetricsLayer
from labkit.layers.retry import RetryLayer
from labkit.monitoring import Metrics
from labkit.monitoring.collector import read_layers
from labkit.monitoring.exposition import LabkitCollector, MetricsServer, make_registry, render
from labkit.transports.sdk import OpenAITransport

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@pytest.fixture
async def loaded(sim):
    transport = OpenAITransport(sim.endpoint)
    metrics = Metrics()
    breaker = CircuitBreaker("sim")
    chain = Chain(transport, [MetricsLayer(metrics=metrics), SingleFlight(), RetryLayer(), breaker])
    for i in range(4):
        await (await chain.stream(f"question {i % 2}", model="gpt-4o", temperature=0, max_tokens=8)).text()
    breaker._to("open")  # a transition, as a run of failures would cause
    yield metrics, chain
    await transport.aclose()


def families(metrics, chain):
    return {f.name: f for f in text_string_to_metric_families(render(make_registry(metrics, chain)))}


def test_the_output_parses_and_follows_the_naming_conventions(loaded):
    found = families(*loaded)
    for family in found.values():
        assert NAME.match(family.name) and family.name.startswith("labkit_")
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
        for sample in family.samples:
            assert all(LABEL.match(k) for k in sample.labels)
    for name in ("labkit_request_duration_seconds", "labkit_time_to_first_token_seconds",
                 "labkit_inter_token_latency_seconds", "labkit_request_stage_duration_seconds"):  # fmt: skip
        assert found[name].type == "histogram"
    assert found["labkit_request_duration_window_seconds"].type == "summary"


def test_request_counts_tokens_and_cost_are_exposed(loaded):
    found = families(*loaded)
    requests = {(s.labels["outcome"], s.labels["source"]): s.value for s in found["labkit_requests"].samples}
    assert sum(requests.values()) == 4
    tokens = {s.labels["kind"]: s.value for s in found["labkit_tokens"].samples}
    assert tokens["input"] > 0 and tokens["output"] > 0
    assert next(s.value for s in found["labkit_cost_usd"].samples if s.labels["source"] == "upstream") > 0


def test_every_layer_reports_with_a_layer_label(loaded):
    found = families(*loaded)
    retries = found["labkit_retry_attempts"].samples[0]
    assert retries.labels == {"layer": "retry"} and retries.value >= 1
    assert found["labkit_single_flight_requests"].samples[0].value >= 1
    opened = [s for s in found["labkit_circuit_breaker_events"].samples if s.labels.get("event") == "opened"]
    assert opened[0].labels["layer"] == "sim" and opened[0].value == 1


def test_stats_as_a_dict_or_a_dataclass_with_a_counter_are_read():
    @dataclasses.dataclass
    class Stats:
        sent: int = 3
        waited_s: float = 1.5
        reasons: Counter = dataclasses.field(default_factory=lambda: Counter({"timeout": 2}))
        hit_rate: float = 0.5  # a ratio: left out

    class ToyLayer:
        stats = Stats()

    class Other:
        def __init__(self) -> None:
            self.stats = {"calls": 7, "in_flight": 2}

    readings = {
        (r.name, r.labels): (r.value, r.kind) for r in read_layers(Chain(lambda r: None, [ToyLayer(), Other()]))
    }
    assert readings[("labkit_toy_sent_total", (("layer", "toy"),))] == (3.0, "counter")
    assert readings[("labkit_toy_waited_seconds_total", (("layer", "toy"),))] == (1.5, "counter")
    assert readings[("labkit_toy_reasons_total", (("layer", "toy"), ("reason", "timeout")))] == (2.0, "counter")
    assert readings[("labkit_other_in_flight", (("layer", "other"),))] == (2.0, "gauge")
    assert not any("hit_rate" in name for name, _ in readings)


def test_a_collector_needs_something_to_collect():
    with pytest.raises(ValueError, match="needs metrics"):
        LabkitCollector()


async def test_the_http_endpoint_serves_the_text_format(loaded):
    async with (
        MetricsServer(make_registry(*loaded)) as server,
        aiohttp.ClientSession() as session,
        session.get(server.url) as response,
    ):
        body = await response.text()
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert "labkit_requests" in names and server.scrapes == 1
