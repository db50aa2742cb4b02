"""labkit.streaming over the real simulated service: timing, mid-stream errors, timeouts, cancellation."""

import asyncio

import openai
import pytest
from conftest import bare_stream

from labkit.chain import Chain
from labkit.endpoint import Endpoint
from labkit.errors import FirstTokenTimeout, MidStreamError, StreamTimeout
from labkit.lab.services import start_sim
from labkit.layers.guard import StreamGuard
from labkit.layers.metrics import MetricsLayer, MetricsRecorder
from labkit.streaming import StreamTiming, consume, estimate_usage, percentile, trim_history
from labkit.tokens import count_messages, count_text
from labkit.transports.sdk import OpenAITransport

PROMPT = [{"role": "user", "content": "Tell me about streaming responses"}]


@pytest.fixture(scope="module")
def bench_sim():
    """Fixed timings: first token after 0.3 s, then 49 tokens 20 ms apart (data/profiles.json 'bench')."""
    with start_sim("bench", seed=0) as service:
        yield service


@pytest.fixture
def clean_bench(bench_sim):
    bench_sim.reset()
    yield bench_sim
    bench_sim.reset()


@pytest.fixture
async def bench_transport(bench_sim):
    async with OpenAITransport(Endpoint(bench_sim.base_url)) as transport:
        yield transport


@pytest.fixture
async def fast_transport(sim):
    async with OpenAITransport(Endpoint(sim.base_url)) as transport:
        yield transport


# -- timing ---------------------------------------------------------------------------------------------


def test_percentile_matches_numpy_linear():
    import numpy as np

    values = [0.5, 0.1, 0.3, 0.9, 0.2, 0.7]
    for q in (0, 25, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


def test_stream_timing_from_marks():
    timing = StreamTiming(started=100.0)
    for t in (100.3, 100.32, 100.34, 100.40):
        timing.mark(t)
    timing.finish(100.41)
    assert timing.ttft_s == pytest.approx(0.3)
    assert timing.chunks == 4
    assert timing.gaps == pytest.approx([0.02, 0.02, 0.06])
    assert timing.itl_p50_s == pytest.approx(0.02)
    assert timing.tokens_per_s() == pytest.approx(3 / 0.1)
    assert timing.tpot_s() == pytest.approx(0.1 / 3)
    assert timing.total_s == pytest.approx(0.41)


async def test_consume_times_a_real_stream(clean_bench, bench_transport):
    baseline = await bare_stream(clean_bench.base_url, messages=PROMPT)  # the same stream, timed by the bare SDK
    chain = Chain(bench_transport, [StreamGuard()])
    outcome = await consume(lambda: chain.stream(PROMPT, model="gpt-4o"), messages=PROMPT)
    t = outcome.timing
    assert outcome.status == "ok" and outcome.finish_reason in ("stop", "length")
    assert outcome.completion_tokens == 50 and not outcome.usage_estimated
    assert t.chunks == 50
    # bench profile (0.3 s to the first token, then 20 ms apart): consume's clock agrees with the bare stopwatch
    assert 0.5 < t.ttft_s / baseline.ttft_s < 2
    assert 0.5 < t.itl_p50_s / baseline.itl_p50_s < 2
    assert t.total_s - t.ttft_s > 0.5 * baseline.spread_s


async def test_metrics_record_itl_and_chunks_for_every_stream(clean_bench, bench_transport):
    baseline = await bare_stream(clean_bench.base_url, messages=PROMPT, max_tokens=10)
    recorder = MetricsRecorder()
    chain = Chain(bench_transport, [MetricsLayer(recorder), StreamGuard()])
    for _ in range(2):
        async with await chain.stream(PROMPT, model="gpt-4o", max_tokens=10) as stream:
            async for _chunk in stream:
                pass
    assert len(recorder.records) == 2
    for record in recorder.records:
        assert record.outcome == "ok" and record.chunks == 10
        assert record.itl_p50_s <= record.itl_p95_s
        assert 0.5 < record.itl_p50_s / baseline.itl_p50_s < 2  # the bare SDK's gaps on the same stream
        assert record.ttft_s < record.latency_s
    summary = recorder.summary()
    assert summary["itl_p50_s"] is not None and summary["itl_p95_s"] >= summary["itl_p50_s"]


# -- mid-stream errors ----------------------------------------------------------------------------------


async def test_sse_error_event_is_a_mid_stream_error_with_partial_text(fresh_sim, fast_transport):
    fresh_sim.set_faults({"stream_error_rate": 1.0})
    recorder = MetricsRecorder()
    chain = Chain(fast_transport, [MetricsLayer(recorder), StreamGuard()])
    received = []
    with pytest.raises(MidStreamError) as info:
        async with await chain.stream(PROMPT, model="gpt-4o", max_tokens=100) as stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    error = info.value
    assert error.kind == "error_event"
    assert error.partial_text == "".join(received) and error.chunks == len(received)
    assert "partial_text" in str(error) and "error event" in str(error)
    assert isinstance(error.__cause__, openai.APIError)
    assert error.body and error.body.get("type") == "server_error"
    # text was shown before the error: a transparent retry would repeat it, so it is not retryable
    assert error.partial_text and error.chunks > 0
    assert error.retryable is False
    assert recorder.records[-1].outcome == "MidStreamError"
    assert fresh_sim.stats()["stream_errors"] == 1


def test_a_stream_error_is_retryable_only_while_no_text_was_received():
    before_text = MidStreamError("truncated", "no finish_reason", partial_text="", chunks=0)
    after_text = MidStreamError("dropped", "connection reset", partial_text="Hello, wor", chunks=3)
    assert before_text.retryable is True
    assert after_text.retryable is False and after_text.partial_text == "Hello, wor"
    assert StreamTimeout("too slow", partial_text="").retryable is True
    assert StreamTimeout("too slow", partial_text="Hi").retryable is False


async def test_dropped_connection_is_a_mid_stream_error_with_partial_text(fresh_sim, fast_transport):
    fresh_sim.set_faults({"drop_mid_stream_rate": 1.0})
    chain = Chain(fast_transport, [StreamGuard()])
    outcome = await consume(lambda: chain.stream(PROMPT, model="gpt-4o", max_tokens=100), messages=PROMPT)
    assert outcome.status == "error"
    assert isinstance(outcome.error, MidStreamError) and outcome.error.kind == "dropped"
    assert outcome.error.partial_text == outcome.text
    # no usage chunk arrived: the usage is the prompt and the partial text, counted with the tokenizer
    assert outcome.usage_estimated
    assert outcome.completion_tokens == count_text(outcome.text, "gpt-4o")
    assert outcome.prompt_tokens == count_messages(PROMPT, "gpt-4o")
    assert fresh_sim.stats()["dropped_connections"] == 1


def _words(*texts: str):
    from openai.types.chat import ChatCompletionChunk

    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o"}
    delta = [{"index": 0, "delta": {"content": text}, "finish_reason": None} for text in texts]
    return [ChatCompletionChunk.model_validate({**head, "choices": [d]}) for d in delta]


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_a_transport_error_of_either_httpx_mid_stream_is_a_dropped_stream(library):
    # the SDK's transport is httpx's fork httpx2: its errors are not httpx's, and may surface unwrapped mid-stream
    import importlib

    from labkit.stream import ChunkStream

    error = importlib.import_module(library).ReadError("connection reset")

    async def upstream(request):
        async def chunks():
            for chunk in _words("Hello, ", "wor"):
                yield chunk
            raise error

        return ChunkStream(chunks())

    outcome = await consume(lambda: Chain(upstream, [StreamGuard()]).stream(PROMPT, model="gpt-4o"), messages=PROMPT)
    assert isinstance(outcome.error, MidStreamError) and outcome.error.kind == "dropped"
    assert outcome.error.partial_text == "Hello, wor" and outcome.error.__cause__ is error


async def test_errors_before_the_stream_starts_are_left_as_they_are(fast_transport):
    chain = Chain(fast_transport, [StreamGuard()])
    with pytest.raises(openai.NotFoundError):
        await chain.stream(PROMPT, model="no-such-model")


# -- timeouts -------------------------------------------------------------------------------------------


async def test_first_token_timeout_is_separate_from_the_total_timeout(clean_bench, bench_transport):
    # bench: the first token takes 0.3 s; a 0.1 s first-token limit fires although the total limit is long
    chain = Chain(bench_transport, [StreamGuard(first_token_timeout_s=0.1, total_timeout_s=30)])
    with pytest.raises(FirstTokenTimeout) as info:
        await (await chain.stream(PROMPT, model="gpt-4o")).text()
    assert info.value.partial_text == "" and info.value.retryable
    assert isinstance(info.value, TimeoutError)
    # the same first-token limit passes when it is longer than the TTFT, even though the stream is longer
    chain = Chain(bench_transport, [StreamGuard(first_token_timeout_s=0.8)])
    text = await (await chain.stream(PROMPT, model="gpt-4o")).text()
    assert text


async def test_total_timeout_keeps_the_partial_text(clean_bench, bench_transport):
    baseline = await bare_stream(clean_bench.base_url, messages=PROMPT)  # the whole stream, no limit
    chain = Chain(bench_transport, [StreamGuard(first_token_timeout_s=5, total_timeout_s=0.6)])
    with pytest.raises(StreamTimeout) as info:
        await (await chain.stream(PROMPT, model="gpt-4o")).text()
    error = info.value
    # 0.3 s to the first token, then 20 ms per token: about 15 tokens in 0.6 s
    assert 3 <= error.chunks < 50 and error.partial_text
    assert error.retryable is False  # text was shown: a retry would repeat it
    # it fired at its limit (less clock rounding), before the stream could have ended by itself
    assert 0.95 * 0.6 <= error.elapsed_s < baseline.total_s


async def test_per_request_controls_override_the_layer(clean_bench, bench_transport):
    chain = Chain(bench_transport, [StreamGuard(first_token_timeout_s=10)])
    with pytest.raises(FirstTokenTimeout):
        await (await chain.stream(PROMPT, model="gpt-4o", controls={"first_token_timeout": 0.05})).text()


async def test_timeouts_close_the_connection_upstream(clean_bench, bench_transport):
    chain = Chain(bench_transport, [StreamGuard(total_timeout_s=0.5)])
    with pytest.raises(StreamTimeout):
        await (await chain.stream(PROMPT, model="gpt-4o")).text()
    await asyncio.sleep(0.2)
    assert clean_bench.stats()["disconnects"] == 1


# -- cancellation ---------------------------------------------------------------------------------------


async def test_stop_cancels_the_stream_and_the_service_sees_the_disconnect(clean_bench, bench_transport):
    recorder = MetricsRecorder()
    chain = Chain(bench_transport, [MetricsLayer(recorder), StreamGuard()])
    stop = False
    seen = asyncio.Event()

    def on_text(_delta, timing):
        if timing.chunks >= 8:
            seen.set()

    task = asyncio.create_task(
        consume(
            lambda: chain.stream(PROMPT, model="gpt-4o"),
            messages=PROMPT,
            on_text=on_text,
            stop_requested=lambda: stop,
        )
    )
    await asyncio.wait_for(seen.wait(), 5)
    stop = True
    task.cancel()
    outcome = await task
    assert outcome.status == "stopped"
    assert 8 <= outcome.timing.chunks < 50 and outcome.text
    assert outcome.usage_estimated and outcome.completion_tokens == count_text(outcome.text, "gpt-4o")
    for _ in range(50):  # the service notices the closed connection at its next write
        if clean_bench.stats()["disconnects"] >= 1:
            break
        await asyncio.sleep(0.02)
    stats = clean_bench.stats()
    assert stats["disconnects"] == 1 and stats["active_requests"] == 0
    assert stats["tokens_generated"] < 50  # it stopped generating
    record = recorder.records[-1]
    assert record.outcome == "cancelled" and record.usage_estimated
    assert record.completion_tokens == outcome.completion_tokens and record.cost_usd > 0


async def test_cancellation_that_is_not_a_stop_propagates(clean_bench, bench_transport):
    chain = Chain(bench_transport, [StreamGuard()])
    task = asyncio.create_task(consume(lambda: chain.stream(PROMPT, model="gpt-4o"), messages=PROMPT))
    await asyncio.sleep(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- request-side levers --------------------------------------------------------------------------------


def test_trim_history_keeps_system_and_newest_turns_within_budget():
    system = {"role": "system", "content": "You are terse."}
    turns = []
    for i in range(30):
        turns.append({"role": "user", "content": f"question {i} " + "word " * 40})
        turns.append({"role": "assistant", "content": f"answer {i} " + "word " * 40})
    question = {"role": "user", "content": "and now?"}
    messages = [system, *turns, question]
    trimmed = trim_history(messages, 500)
    assert trimmed[0] == system and trimmed[-1] == question
    assert count_messages(trimmed) <= 500 < count_messages(messages)
    assert trimmed[1]["role"] == "user"  # starts on a user turn
    assert trimmed[1:-1] == messages[len(messages) - len(trimmed) + 1 : -1]  # the newest turns, in order
    assert trim_history([question], 1) == [question]  # the question is kept even alone over budget


def test_estimate_usage_counts_prompt_and_partial_text():
    usage = estimate_usage(PROMPT, "Hello there, world.", "gpt-4o")
    assert usage.prompt_tokens == count_messages(PROMPT) and usage.completion_tokens == count_text(
        "Hello there, world."
    )
