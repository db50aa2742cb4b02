"""The per-stage breakdown: stages add up to the total, in the order a request passes them."""

import pytest

from labkit.cache import CacheLayer, MemoryTier
from labkit.chain import Chain
from labkit.layers.metrics import MetricsLayer
from labkit.monitoring import Metrics
from labkit.monitoring.stages import STAGE_ORDER, StageMark, traced_http_client
from labkit.timing import StageLog, mark, opened
from labkit.transports.sdk import OpenAITransport


@pytest.fixture
async def traced(sim):
    transport = OpenAITransport(sim.endpoint, http_client=traced_http_client())
    yield transport
    await transport.aclose()


def monitored(transport):
    metrics = Metrics()
    layer = MetricsLayer(metrics=metrics, source_mark="cache_lookup")
    chain = Chain(
        transport, [layer, CacheLayer([MemoryTier()]), StageMark("cache_lookup"), StageMark("admission_wait")]
    )
    return chain, layer, metrics


async def test_the_stages_of_a_stream_add_up_to_its_latency(traced):
    chain, layer, _ = monitored(traced)
    stream = await chain.stream("where does the time go?", model="gpt-4o", temperature=0, max_tokens=20)
    await stream.text()
    [record] = layer.recorder.records
    assert list(record.stages) == ["cache_lookup", "admission_wait", "client", "connect", "first_token", "decode"]
    assert sum(record.stages.values()) == pytest.approx(record.latency_s, abs=1e-9)


async def test_a_plain_cache_hit_is_counted_as_a_cache_hit(traced):
    chain, layer, metrics = monitored(traced)
    for _ in range(2):
        await chain.complete("same question", model="gpt-4o", temperature=0, max_tokens=5)
    assert [r.source for r in layer.recorder.records] == ["upstream", "cache"]
    assert list(layer.recorder.records[-1].stages) == ["response"]
    assert metrics.snapshot()["cache_hit_rate"] == 0.5


async def test_the_stage_histograms_follow_the_records(traced):
    chain, layer, metrics = monitored(traced)
    for i in range(3):
        await (await chain.stream(f"q{i}", model="gpt-4o", max_tokens=5)).text()
    table = {row["stage"]: row for row in metrics.view().stage_table()}
    assert set(table) <= set(STAGE_ORDER) and table["decode"]["requests"] == 3
    assert sum(row["total_s"] for row in table.values()) == pytest.approx(
        sum(r.latency_s for r in layer.recorder.records)
    )


def test_the_first_checkpoint_of_a_name_wins():
    log = StageLog(started=0.0)
    log.mark("connect", at=1.0)
    log.mark("connect", at=5.0)
    log.mark("first_token", at=2.0)
    assert log.stages() == {"connect": 1.0, "first_token": 1.0}


def test_marking_without_an_open_log_does_nothing():
    mark("cache_lookup")  # no metrics layer above: nothing to record, nothing raised
    log = StageLog()
    with opened(log):
        mark("cache_lookup")
    mark("admission_wait")
    assert [name for name, _ in log.marks] == ["cache_lookup"]


def test_a_stage_mark_needs_a_name():
    with pytest.raises(ValueError):
        StageMark("")
