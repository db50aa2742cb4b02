"""The layer chain over the real simulated service: order, streams passed through, metrics recorded."""

import openai
import pytest

from labkit.chain import Chain
from labkit.endpoint import Endpoint
from labkit.layers.metrics import MetricsLayer, MetricsRecorder
from labkit.request import ChatRequest
from labkit.stream import ChunkStream, assemble, completion_chunks
from labkit.transports.sdk import OpenAITransport


@pytest.fixture
async def transport(sim):
    async with OpenAITransport(Endpoint(sim.base_url)) as transport:
        yield transport


@pytest.fixture
def model(sim):
    return sim.models[0] if getattr(sim, "models", None) else "gpt-4o"


class Tag:
    """A layer that notes its name on the way in and out, to observe ordering."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    async def __call__(self, request, call_next):
        self.log.append(f"{self.name}>")
        result = await call_next(request)
        self.log.append(f"<{self.name}")
        return result


async def test_layers_run_outermost_first(transport, model):
    log = []
    chain = Chain(transport, [Tag("a", log), Tag("b", log)])
    await chain.complete("hi", model=model, max_tokens=5)
    assert log == ["a>", "b>", "<b", "<a"]


async def test_plain_call_returns_a_completion_with_usage(transport, model):
    completion = await Chain(transport).complete("Say hello", model=model, max_tokens=20)
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 20


async def test_stream_passes_through_and_collects_to_the_same_shape(transport, model):
    stream = await Chain(transport).stream("Say hello", model=model, max_tokens=20)
    assert isinstance(stream, ChunkStream)
    completion = await stream.collect()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0


async def test_transport_sends_every_generation_parameter(transport, model):
    request = ChatRequest.create(model, "Count to ten", max_tokens=3, temperature=0)
    completion = await transport(request)
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


async def test_metrics_record_plain_call_with_tokens_and_cost(transport, model):
    recorder = MetricsRecorder()
    chain = Chain(transport, [MetricsLayer(recorder)])
    completion = await chain.complete("Say hello", model=model, max_tokens=20)
    [record] = recorder.records
    assert record.outcome == "ok"
    assert record.latency_s > 0
    assert record.prompt_tokens == completion.usage.prompt_tokens
    assert record.completion_tokens == completion.usage.completion_tokens


async def test_metrics_time_first_token_of_a_stream(transport, model):
    recorder = MetricsRecorder()
    chain = Chain(transport, [MetricsLayer(recorder)])
    async with await chain.stream("Tell me a story", model=model, max_tokens=30) as stream:
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    [record] = recorder.records
    assert text and record.outcome == "ok"
    assert 0 < record.ttft_s <= record.latency_s
    assert record.completion_tokens > 0


async def test_metrics_count_a_stream_closed_early_as_cancelled(transport, model):
    recorder = MetricsRecorder()
    chain = Chain(transport, [MetricsLayer(recorder)])
    stream = await chain.stream("Tell me a long story", model=model, max_tokens=200)
    async for _ in stream:
        break
    await stream.aclose()
    assert [r.outcome for r in recorder.records] == ["cancelled"]


async def test_metrics_record_errors_by_class(transport):
    recorder = MetricsRecorder()
    chain = Chain(transport, [MetricsLayer(recorder)])
    with pytest.raises(openai.NotFoundError):
        await chain.complete("hi", model="no-such-model")
    assert recorder.records[0].outcome == "NotFoundError"
    assert recorder.summary()["errors"] == 1


async def test_a_completion_as_merged_chunks_assembles_back_to_the_same_answer(transport, model):
    completion = await Chain(transport)(ChatRequest.create(model, "merge", max_tokens=12, temperature=0))
    chunks = completion_chunks(completion)
    assert len(chunks) == 2 and chunks[0].choices[0].delta.role == "assistant"

    async def replay():
        for chunk in chunks:
            yield chunk

    again = await assemble(replay())
    assert again.choices[0].message.content == completion.choices[0].message.content
    assert again.choices[0].finish_reason == completion.choices[0].finish_reason and again.usage == completion.usage
