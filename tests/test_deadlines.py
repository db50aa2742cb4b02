"""`labkit.deadlines`: many deadlines on one loop timer run when due, in order, and never once cancelled."""

import asyncio
import time

from labkit.deadlines import COMPACT_AFTER, Deadlines


async def test_deadlines_run_in_time_order_not_before_they_are_due():
    loop = asyncio.get_running_loop()
    deadlines, ran = Deadlines(), []
    start = loop.time()
    for delay in (0.03, 0.01, 0.02):
        deadlines.call_at(start + delay, lambda delay=delay: ran.append((delay, loop.time() - start)))
    await asyncio.sleep(0.06)
    assert [delay for delay, _ in ran] == [0.01, 0.02, 0.03]
    resolution = time.get_clock_info("monotonic").resolution
    assert all(at >= delay - resolution for delay, at in ran)


async def test_deadlines_due_at_the_same_time_run_in_the_order_they_were_set():
    loop = asyncio.get_running_loop()
    deadlines, ran = Deadlines(), []
    when = loop.time() + 0.01
    for name in "abc":
        deadlines.call_at(when, lambda name=name: ran.append(name))
    await asyncio.sleep(0.03)
    assert ran == ["a", "b", "c"]


async def test_a_cancelled_deadline_never_runs_and_the_others_still_do():
    deadlines, ran = Deadlines(), []
    first = deadlines.call_later(0.01, lambda: ran.append("first"))
    deadlines.call_later(0.02, lambda: ran.append("second"))
    first.cancel()
    await asyncio.sleep(0.04)
    assert ran == ["second"]
    assert len(deadlines) == 0


async def test_cancelling_a_deadline_that_ran_changes_nothing():
    deadlines, ran = Deadlines(), []
    done = deadlines.call_later(0.0, lambda: ran.append("done"))
    await asyncio.sleep(0.01)
    done.cancel()
    deadlines.call_later(0.0, lambda: ran.append("next"))
    await asyncio.sleep(0.01)
    assert ran == ["done", "next"]


async def test_an_earlier_deadline_set_later_runs_first():
    deadlines, ran = Deadlines(), []
    deadlines.call_later(0.05, lambda: ran.append("late"))
    deadlines.call_later(0.01, lambda: ran.append("early"))
    await asyncio.sleep(0.02)
    assert ran == ["early"]
    await asyncio.sleep(0.05)
    assert ran == ["early", "late"]


async def test_a_deadline_set_by_a_callback_runs_before_a_later_one_already_set():
    deadlines, ran = Deadlines(), []
    deadlines.call_later(0.0, lambda: deadlines.call_later(0.01, lambda: ran.append("from the callback")))
    deadlines.call_later(0.05, lambda: ran.append("set first"))
    await asyncio.sleep(0.03)
    assert ran == ["from the callback"]
    await asyncio.sleep(0.04)
    assert ran == ["from the callback", "set first"]


async def test_a_failing_callback_is_reported_and_the_others_run():
    loop = asyncio.get_running_loop()
    reported, ran = [], []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    try:
        deadlines = Deadlines()
        when = loop.time() + 0.01
        deadlines.call_at(when, lambda: 1 / 0)
        deadlines.call_at(when, lambda: ran.append("after"))
        await asyncio.sleep(0.03)
    finally:
        loop.set_exception_handler(None)
    assert [type(error) for error in reported] == [ZeroDivisionError]
    assert ran == ["after"]


async def test_cancelled_deadlines_are_dropped_once_they_outnumber_the_live_ones():
    deadlines = Deadlines()
    live = [deadlines.call_later(60.0, lambda: None) for _ in range(10)]
    for _ in range(4 * COMPACT_AFTER):
        deadlines.call_later(60.0, lambda: None).cancel()
    assert len(deadlines) == len(live)
    assert len(deadlines._heap) <= 2 * COMPACT_AFTER + len(live)


def test_used_on_a_second_event_loop_it_starts_afresh_there():
    deadlines, ran = Deadlines(), []

    async def set_and_leave(name: str, delay: float) -> None:
        deadlines.call_later(delay, lambda: ran.append(name))
        await asyncio.sleep(0.01)

    asyncio.run(set_and_leave("left behind", 60.0))
    asyncio.run(set_and_leave("second loop", 0.0))
    assert ran == ["second loop"]
    assert len(deadlines) == 0
