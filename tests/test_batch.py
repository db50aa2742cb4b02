"""run_batch / start_batch: input order, per-item errors, cancellation; the progress observer."""

from __future__ import annotations

import asyncio

import pytest

from labkit.batch import ItemStatus, run_batch, start_batch
from labkit.chain import Chain
from labkit.lab.progress import BatchProgress
from labkit.request import ChatRequest
from labkit.transports.sdk import OpenAITransport


async def test_results_come_back_in_input_order_whatever_the_finishing_order():
    async def slow_first(x: int) -> int:
        await asyncio.sleep(0.05 if x == 0 else 0)
        return x * 10

    result = await run_batch(slow_first, [0, 1, 2, 3], concurrency=4)
    assert result.values == [0, 10, 20, 30]


async def test_one_failing_item_is_that_items_error_not_the_batchs():
    async def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("bad item")
        return x

    result = await run_batch(fail_on_two, range(5), concurrency=2)
    assert [i.status for i in result.items].count(ItemStatus.ERROR) == 1
    assert isinstance(result.items[2].error, ValueError)
    assert result.values[4] == 4


async def test_the_sustained_rate_leaves_out_the_opening_burst():
    async def paced(x: int) -> int:  # ten at once (the burst), then one every 20 ms
        await asyncio.sleep(0 if x < 10 else 0.02 * (x - 9))
        return x

    result = await run_batch(paced, range(30), concurrency=30)
    assert result.sustained_rate() == pytest.approx(50, rel=0.25)  # the whole batch: 30 / 0.4 s = 75 per second
    assert result.count(ItemStatus.OK) / result.wall_s > result.sustained_rate()  # the burst inflates the whole


async def test_concurrency_bounds_items_in_flight():
    in_flight = peak = 0

    async def work(x: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return x

    await run_batch(work, range(20), concurrency=3)
    assert peak == 3


def test_concurrency_below_one_is_refused():
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(run_batch(lambda x: asyncio.sleep(0), [1], concurrency=0))


async def test_cancel_keeps_completed_cancels_in_flight_and_never_starts_the_rest():
    started: list[int] = []

    async def work(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0 if x < 2 else 10)
        return x

    run = start_batch(work, range(10), concurrency=3)
    await asyncio.sleep(0.05)
    run.cancel()
    result = await run
    assert result.cancelled
    assert result.count(ItemStatus.OK) == 2
    assert result.count(ItemStatus.CANCELLED) == 3
    assert result.count(ItemStatus.NOT_SENT) == 5
    assert sorted(started) == [0, 1, 2, 3, 4]


async def test_cancelled_batch_sends_nothing_more_to_the_service(fresh_sim):
    fresh_sim.set_limits(rpm=600, tpm=1_000_000, burst_s=0.5)  # 10 requests/s: the batch takes seconds
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        chain = Chain(transport)
        requests = [ChatRequest.create("gpt-4o", f"item {i}", max_tokens=5) for i in range(40)]

        async def paced(request: ChatRequest):
            await asyncio.sleep(0.1)
            return await chain(request)

        run = start_batch(paced, requests, concurrency=2)
        await asyncio.sleep(0.35)
        run.cancel()
        result = await run
        await asyncio.sleep(0.1)
    sent = sum(fresh_sim.stats()["requests_by_status"].values())
    assert result.count(ItemStatus.OK) >= 1
    assert sent <= result.count(ItemStatus.OK) + result.count(ItemStatus.CANCELLED)
    assert result.count(ItemStatus.NOT_SENT) > 20


async def test_progress_counts_done_failed_tokens_and_spend(fresh_sim):
    progress = BatchProgress("t", interactive=False)
    async with OpenAITransport(fresh_sim.endpoint) as transport:
        requests = [ChatRequest.create("gpt-4o", f"item {i}", max_tokens=5) for i in range(4)]
        requests.append(ChatRequest.create("no-such-model", "x", max_tokens=5))
        await run_batch(Chain(transport), requests, concurrency=2, observer=progress)
    assert (progress.done, progress.failed, progress.in_flight) == (4, 1, 0)
    assert progress.tokens > 0 and progress.spend_usd > 0


async def test_progress_widget_cancel_button_stops_the_run():
    progress = BatchProgress("w", interactive=True)

    async def forever(x: int) -> int:
        await asyncio.sleep(10)
        return x

    run = progress.attach(start_batch(forever, range(5), concurrency=5, observer=progress))
    await asyncio.sleep(0.01)
    progress._button.click()
    result = await run
    assert result.count(ItemStatus.CANCELLED) == 5
    assert progress._button.disabled


def test_progress_without_widgets_prints_one_plain_line(capsys):
    progress = BatchProgress("plain", interactive=False)
    progress.batch_started(3)
    progress.finish()
    assert capsys.readouterr().out.startswith("plain: 0/3 done")
